"""Jobs that orchestrate the library, the Beam jobs and serving: calibrate, demo, online learning, tuning."""
