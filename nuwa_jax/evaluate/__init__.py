"""Evaluation of generated long videos (docs/evaluation.md).

    python -m nuwa_jax.evaluate --generated=... --reference=... --out=report.json
    python -m nuwa_jax.evaluate.train_features --data=... --out=weights/synthetic_features

Modules, one idea each:
  frechet        Fréchet distance of Gaussians; streaming mean / covariance
  blocks         16-frame blocks of a long video; the per-block result type
  fid, fvd       Avg-FID and B-FVD-16 as this project reads the paper
  features       the FeatureExtractor protocol; batching; load_extractor
  netlib         conv / batch-norm / pooling blocks and PyTorch state-dict import
  inception      InceptionV3 (FID), pytorch-fid layout
  i3d            I3D (FVD), piergiaj/pytorch-i3d layout
  standard       the two as one FeatureExtractor
  synthetic_net  the offline feature networks (trained on the benchmark's ground truth)
  train_features their training loop and CLI
  adherence      caption adherence by the renderer's own rules
  coherence      frame-to-frame change at schedule seams vs inside segments
  interpolation  the local levels' task on held-out clips: models vs linear blends, PSNR
  conditioning   does a trained local MTD read its given frames? (true vs wrong ends)
  videos         reading mp4s, frame stores and frame directories in chunks
  report         one streaming pass over everything -> the JSON report
"""
