"""The dashboard's files: HTML, CSS and JS served at /ui/, all in the package.

No asset is fetched from the internet; the page works on an offline edge site.
"""
