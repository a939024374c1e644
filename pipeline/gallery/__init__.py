"""A static, self-contained gallery page for an output directory: ``OUT/index.html``.

    write_gallery(out_dir)          # one-shot
    GalleryWriter(out_dir).write()  # keep one alive to cache infotexts between refreshes

The page opens from disk (file://) with no server and no network: one HTML file with its CSS and
JS inline, the data as one JSON blob in ``<script type="application/json">``, image links
relative to the directory. See ``build`` for the data and ``page`` for the HTML.
"""

from pipeline.gallery.build import GalleryWriter, write_gallery

__all__ = ["GalleryWriter", "write_gallery"]
