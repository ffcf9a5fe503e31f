"""Views: tables (tables.py) and matplotlib figures (figures.py) read from a run folder, and a
sweep's chart and table (sweep.py) read from its runs.

Pure: no Gradio, no training. May import the engine and the core.
"""
