"""The metadata service: incremental Danbooru sync (`sync`, `client`) and a read-only HTTP API
(`app`, `datasets`) with a browse page (`static/`)."""
