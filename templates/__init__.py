"""The default email theme (Jinja2 templates and CSS), shipped as `newsletter.templates`.

Copy any of these files into your own `[email] templates_dir` to override it;
files you do not copy keep coming from here.
"""
