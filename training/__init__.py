"""Training: the seeded synthetic sets (``synthetic`` for classifiers, ``shapesdet`` for detectors), the
classifier/segmentor loop (``train``), detector training (``detect``), its losses and DRKD distillation."""

SYNTHETIC = "synthetic:shapesdet"  # the detection data source name tvdeploy train/eval accept (light: CLI help)
