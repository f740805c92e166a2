"""hls4ml back end: IR -> hls4ml HLS project, with C simulation (target class pending, see docs/hls4ml.md)."""
