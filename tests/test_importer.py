"""Reading history files into Segment messages (services/importer*.py): no server, no network."""
from __future__ import annotations

import csv
import gzip
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services import importer
from services.importer import ImportFileError, batches, parse_mapping, read, shift
from tests.retail_data import online_retail_slice

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class TestCsv:
    def test_numeric_cells_become_numbers_and_text_stays_text(self, tmp_path):
        path = write(tmp_path / "e.csv", "type,event,userId,properties.revenue,properties.zip,properties.note,timestamp\n"
                                         "track,Order Completed,u1,12.5,007,\"1,5\",2024-03-01T10:00:00Z\n")
        (planned,) = read(path, "csv", {}).messages
        assert planned.message["properties"] == {"revenue": 12.5, "zip": "007", "note": "1,5"}
        assert planned.message["userId"] == "u1" and planned.at == datetime(2024, 3, 1, 10, tzinfo=UTC)

    def test_mapped_and_left_out_columns(self, tmp_path):
        path = write(tmp_path / "e.csv", "who,what,total,page,junk\nann,Order Completed,10,/home,x\n")
        mapping = parse_mapping(["who=userId", "what=event", "total=properties.revenue", "page=context.page.path",
                                 "junk=-"])
        (planned,) = read(path, "csv", mapping).messages
        assert planned.message == {"userId": "ann", "event": "Order Completed", "properties": {"revenue": 10},
                                   "context": {"page": {"path": "/home"}}, "type": "track",
                                   "messageId": planned.message["messageId"]}

    def test_malformed_rows_are_rejected_one_by_one_with_their_row_numbers(self, tmp_path):
        path = write(tmp_path / "e.csv", "event,userId,properties.revenue,timestamp\n"
                                         "Order Completed,a,1,2024-01-01\n"
                                         "Order Completed,b,twelve,2024-01-01\n"
                                         "Order Completed,,3,2024-01-01\n"
                                         "Order Completed,d,4,yesterday\n"
                                         "Order Completed,e,5,2024-01-02\n")
        plan = read(path, "csv", {})
        assert [p.message["userId"] for p in plan.messages] == ["a", "e"]
        assert [(r.rows, r.reason.split(":")[0].split(" '")[0]) for r in plan.rejects] == [
            ([3], "bad number"), ([4], "no customer id"), ([5], "bad timestamp")]

    def test_an_unknown_column_or_mapping_is_a_one_line_error(self, tmp_path):
        path = write(tmp_path / "e.csv", "event,userId,amount\nx,a,1\n")
        with pytest.raises(ImportFileError, match="column 'amount' names no Segment field"):
            read(path, "csv", {})
        with pytest.raises(ImportFileError, match="not a column of the file"):
            read(path, "csv", parse_mapping(["total=properties.revenue"]))
        for bad in ("amount", "amount=", "amount=revenue", "amount=properties."):
            with pytest.raises(ImportFileError, match="--map"):
                parse_mapping([bad])

    def test_ids_are_the_same_every_time_and_differ_for_duplicate_rows(self, tmp_path):
        path = write(tmp_path / "e.csv", "event,userId\nx,a\nx,a\n")
        first, again = read(path, "csv", {}), read(path, "csv", {})
        ids = [p.message["messageId"] for p in first.messages]
        assert ids == [p.message["messageId"] for p in again.messages] and len(set(ids)) == 2


class TestJsonl:
    def test_lines_are_messages_and_bad_lines_are_rejects(self, tmp_path):
        path = write(tmp_path / "e.jsonl", json.dumps({"type": "track", "event": "x", "userId": "a", "messageId": "m1"})
                     + "\n{not json\n[1]\n\n" + json.dumps({"type": "identify", "anonymousId": "z"}) + "\n")
        plan = read(path, "auto", {})
        assert plan.format == "jsonl" and plan.rows == 4
        assert [p.message["messageId"] for p in plan.messages][0] == "m1"
        assert [p.rows for p in plan.messages] == [[1], [5]]
        assert [r.rows for r in plan.rejects] == [[2], [3]]


class TestOnlineRetail:
    def test_invoices_orders_refunds_identifies(self, tmp_path):
        path = write(tmp_path / "r.csv", HEADER +
                     "536365,85123A,WHITE HANGING HEART,6,2011-06-01 08:26:00,2.55,17850,United Kingdom\n"
                     "536365,71053,\"LANTERN, WHITE\",6,2011-06-01 08:27:00,3.39,17850,United Kingdom\n"
                     "536365,71053,\"LANTERN, WHITE\",6,2011-06-01 08:27:00,3.39,17850,United Kingdom\n"
                     "536366,22633,HAND WARMER,6,2011-06-01 08:28:00,1.85,,United Kingdom\n"
                     "C536379,D,Discount,-1,2011-12-01 09:41:00,27.50,17850,France\n"
                     "536380,X,bad,six,2011-12-01 09:41:00,1,17850,France\n")
        plan = read(path, "auto", {})
        assert plan.format == "online-retail" and plan.rows == 6 and plan.without_customer == 1
        identify, order, refund = (p.message for p in plan.messages)
        assert identify["traits"] == {"country": "France"} and identify["timestamp"] == "2011-12-01T09:41:00Z"
        assert order["event"] == "Order Completed" and order["timestamp"] == "2011-06-01T07:26:00Z"  # BST
        assert order["properties"]["revenue"] == pytest.approx(6 * 2.55 + 2 * 6 * 3.39)
        assert len(order["properties"]["products"]) == 3 and order["properties"]["currency"] == "GBP"
        assert refund["event"] == "Order Refunded" and refund["properties"]["revenue"] == 27.5
        assert refund["properties"]["products"][0]["quantity"] == 1
        assert [p.rows for p in plan.messages] == [[6], [2, 3, 4], [6]]
        assert [(r.rows, r.reason[:10]) for r in plan.rejects] == [([7], "bad number")]

    def test_the_slice_holds_what_its_readme_says(self):
        plan = read(online_retail_slice(), "auto", {})
        identifies = [p for p in plan.messages if p.message["type"] == "identify"]
        assert (plan.rows, plan.without_customer, len(identifies), plan.rejects) == (27_312, 451, 186, [])
        # 215 cancellation invoices, one of them without a CustomerID
        assert sum(p.message.get("event") == "Order Refunded" for p in plan.messages) == 214

    def test_an_invoice_too_big_for_one_message_keeps_its_revenue(self, tmp_path):
        plan = read(online_retail_slice(), "online-retail", {})
        big = [p for p in plan.messages if "name" not in p.message.get("properties", {}).get("products", [{"name": 1}])[0]]
        assert len(big) == 10  # the slice's largest invoices: names dropped, every line kept
        for planned in big:
            assert importer.json_size(planned.message) < 32 * 1024
            assert len(planned.message["properties"]["products"]) == len(planned.rows)
        rows = "".join(f"999999,SKU{i},A PRODUCT WITH A LONG NAME {i},1,2011-01-05 10:00:00,0.5,12345,Norway\n"
                       for i in range(2000))
        (huge,) = [p.message for p in read(write(tmp_path / "r.csv", HEADER + rows), "auto", {}).messages
                   if p.message["type"] == "track"]
        properties = huge["properties"]
        assert importer.json_size(huge) < 32 * 1024 and properties["revenue"] == 1000.0
        assert len(properties["products"]) + properties["products_omitted"] == 2000

    def test_xlsx_reads_like_csv(self, tmp_path):
        import openpyxl

        book = openpyxl.Workbook()
        sheet = book.active
        with gzip.open(online_retail_slice(), "rt", encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if i > 2000:
                    break
                sheet.append(row if i == 0 else [row[0], row[1], row[2], int(row[3]),
                                                 datetime.fromisoformat(row[4]), float(row[5]),
                                                 float(row[6]) if row[6] else None, row[7]])
        book.save(tmp_path / "r.xlsx")
        text = tmp_path / "r.csv"
        with gzip.open(online_retail_slice(), "rt", encoding="utf-8", newline="") as f:
            text.write_text("".join(line for _, line in zip(range(2001), f, strict=False)))
        from_xlsx, from_csv = read(tmp_path / "r.xlsx", "auto", {}), read(text, "auto", {})
        assert [p.message for p in from_xlsx.messages] == [p.message for p in from_csv.messages]

    def test_xlsx_without_openpyxl_says_what_to_install(self, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "openpyxl", None)
        (tmp_path / "r.xlsx").write_bytes(b"PK")
        with pytest.raises(ImportFileError, match=r"needs openpyxl: pip install 'funnelstream\[xlsx\]'"):
            read(tmp_path / "r.xlsx", "auto", {})


class TestShift:
    def test_the_latest_event_lands_at_the_target_and_gaps_stay(self, tmp_path):
        lines = [{"type": "track", "event": "x", "userId": "a", "timestamp": t}
                 for t in ("2020-01-01T00:00:00Z", "2020-03-01T12:00:00+01:00", "2019-06-01T00:00:00Z")]
        path = write(tmp_path / "e.jsonl", "".join(json.dumps(m) + "\n" for m in lines))
        plan = read(path, "jsonl", {})
        before = [p.at for p in plan.messages]
        target = datetime(2030, 5, 5, tzinfo=UTC)
        delta = shift(plan, target)
        assert max(p.at for p in plan.messages) == target
        assert [p.at - b for p, b in zip(plan.messages, before, strict=True)] == [delta] * 3
        assert plan.messages[1].message["timestamp"] == "2030-05-05T00:00:00Z"


class TestBatches:
    def test_batches_split_by_count_and_by_size(self):
        small = [importer.Planned([i], {"n": i}, None) for i in range(10)]
        assert [len(b) for _, b in batches(small, 4, 10_000)] == [4, 4, 2]
        big = [importer.Planned([i], {"x": "y" * 1000}, None) for i in range(10)]
        sizes = [(start, len(b)) for start, b in batches(big, 250, 3_500)]
        assert sizes == [(0, 3), (3, 3), (6, 3), (9, 1)]

    def test_gzip_and_bom(self, tmp_path):
        path = tmp_path / "e.csv.gz"
        with gzip.open(path, "wt", encoding="utf-8-sig") as f:
            f.write("event,userId\nx,a\n")
        assert read(path, "auto", {}).messages[0].message["userId"] == "a"
