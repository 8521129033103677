-- One database per service: no table is shared across services.
CREATE DATABASE ingest;
CREATE DATABASE segmentation;
CREATE DATABASE funnel;
CREATE DATABASE followup;
CREATE DATABASE recommendation;
