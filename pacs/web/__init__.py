"""The project's own pages: Jinja2 templates, their CSS and JavaScript, and the message
catalogues every text comes from (zh-CN, the default, and en)."""
