"""The shared ground every layer imports: typed config loading, user-facing errors, the Ray
connection and URI storage (local paths and s3://). It imports nothing from codiray's other
packages; `pipelines/`, `models/`, `training/`, `infra/` sit on it and the entry points in
`codiray/` (CLI, demo, bench) sit on top of everything."""
