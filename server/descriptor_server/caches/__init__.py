"""Caches: each module implements the BlobDescriptorService protocol in front of a backend.

- ``inmemory``: bounded, scan-resistant, in this process.
- ``redis``: distribution's Redis layout, shared with registries and other replicas.
- ``none``: caches nothing (every Stat goes to the backend).
"""
