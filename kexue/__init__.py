"""kexue: executable explanations of seven 2021 articles from Scientific Spaces (kexue.fm).

Each chapter of the book has one module here; ``kexue.nn`` holds the shared
Transformer, ``kexue.utils`` the device, seed and profile helpers, and
``kexue.plot`` the book's figure style.
"""

__version__ = "0.1.0"
