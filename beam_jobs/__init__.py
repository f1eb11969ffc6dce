"""Beam jobs: ``build_examples`` (raw ad logs -> TFRecords, vocabularies, posterior statistics, manifest)
and ``calibration_stats``."""
