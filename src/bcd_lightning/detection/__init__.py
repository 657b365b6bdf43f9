"""Object-detection distillation: torchvision FPN detectors, stride-paired feature losses, box mAP.

models (detectors by config), data (embedded synthetic, COCO, VOC), features (hooks, frozen teacher,
stride pairing, padding masks), losses (BCD boundary/context, FitNet, CWD, PKD), metrics (box mAP),
lit (the LightningModule), train / pipeline (entry points). See docs/method.md, "Detection".
"""
