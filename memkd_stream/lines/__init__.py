"""Line models in Redis (DESIGN.md §5): the versioned, chunked, checksummed ``LineStore``, its
errors, and the helpers that read artifact files before they are published."""
