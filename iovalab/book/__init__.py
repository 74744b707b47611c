"""The book's views and widgets: controls -> model -> drawing, no model logic (matplotlib, ipywidgets)."""
