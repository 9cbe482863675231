"""Gradio dashboard for the exported spectral-downsampling models (``python app.py``).

``service`` (models, validation, caching; no Gradio calls), ``figures`` (Plotly figures),
``handlers`` (event handlers behind the API endpoints), ``layout`` (the Blocks),
``components`` (the upload component), ``training_views`` (Training tab).
"""
from .layout import CSS, build_demo
from .service import DashboardService

__all__ = ["CSS", "DashboardService", "build_demo"]
