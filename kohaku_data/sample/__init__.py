"""`kdata sample`: deterministic, realistic sample databases and raw images."""

from kohaku_data.sample.metadata import SampleError, load_tag_table, write_sample_db

__all__ = ["SampleError", "load_tag_table", "write_sample_db"]
