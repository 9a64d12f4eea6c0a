"""Report stage: terminal inspection, tables, plots and the token-highlight HTML page."""
