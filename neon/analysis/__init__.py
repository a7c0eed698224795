"""What is read off the weights and scores, apart from making them: the w line search (`auto_w`), the
anti-alignment diagnostic (`alignment`), the output-space twin (`output_twin`), the held-out figures
(`heldout`), a run's tables and plots (`run_report`) and a sweep's table and report (`sweep_table`)."""
