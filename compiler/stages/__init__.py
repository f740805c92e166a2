"""A build's stages, in the order ``stages.compile`` runs them: spec (the build description),
data (files read once), load, passes, quantize, emit, verify, report; ``cached`` restores and
stores targets in the content-addressed cache."""
