"""hls4ml back end: IR -> hls4ml HLS project (Hls4mlTarget in target.py), with C simulation; see docs/hls4ml.md."""
