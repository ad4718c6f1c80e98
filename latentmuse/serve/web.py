"""The web page at ``/`` (Gradio), mounted on the API's app. (Stub: the page is being written.)"""

from __future__ import annotations


def mount_page(app, service):
    return app
