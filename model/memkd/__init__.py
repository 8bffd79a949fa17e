"""MemKD: memory-guided knowledge distillation for unsupervised anomaly detection.

A pure PyTorch library (no Kafka, no Redis): teacher backbones, the Reverse-Distillation student
with normality-recalling (NR) memories, losses, training, anomaly maps, calibration and the line
artifact. The method is described in ``model/MEMKD.md``; modules are imported explicitly
(``from memkd.line_model import LineModel``) so that importing the package loads nothing.
"""

__version__ = "0.1.0"
