"""InceptionV3 (FID) and I3D (FVD) in NNX against PyTorch re-implementations of the
upstream layouts (pytorch-fid's FID Inception on torchvision's module tree; the
piergiaj/pytorch-i3d port), on random weights saved as safetensors in the upstream names,
at reduced input sizes (both networks are fully convolutional up to their global pools)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
safetensors_torch = pytest.importorskip("safetensors.torch")

from nuwa_jax.convert.common import WeightImportError  # noqa: E402
from nuwa_jax.evaluate import i3d, inception, netlib  # noqa: E402


# ---------------------------------------------------------------------------------------
# PyTorch references (written for these tests from the upstream layouts).
# ---------------------------------------------------------------------------------------
class TBasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class TInceptionA(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.branch1x1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = TBasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = TBasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = TBasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg(x)),
            ],
            1,
        )


class TInceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = TBasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b, F.max_pool2d(x, 3, 2)], 1)


class TInceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = TBasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = TBasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = TBasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = TBasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for i in range(2, 6):
            c = getattr(self, f"branch7x7dbl_{i}")(c)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(_avg(x))], 1)


class TInceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = TBasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = TBasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = TBasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = TBasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b = self.branch7x7x3_1(x)
        for i in range(2, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


class TInceptionE(nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = TBasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = TBasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = TBasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = TBasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), b, c, self.branch_pool(pooled)], 1)


class TFIDInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = TBasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = TBasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = TBasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = TBasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = TBasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c = TInceptionA(192, 32), TInceptionA(256, 64)
        self.Mixed_5d, self.Mixed_6a = TInceptionA(288, 64), TInceptionB(288)
        self.Mixed_6b, self.Mixed_6c = TInceptionC(768, 128), TInceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = TInceptionC(768, 160), TInceptionC(768, 192)
        self.Mixed_7a = TInceptionD(768)
        self.Mixed_7b, self.Mixed_7c = TInceptionE(1280, False), TInceptionE(2048, True)
        self.fc = nn.Linear(2048, 1008)  # in the checkpoint, unused by FID

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _same(size, k, s):
    return [netlib.same_pads([n], [kk], [ss])[0] for n, kk, ss in zip(size, k, s)]


def _pad_same(x, k, s):
    (tf, tb), (hf, hb), (wf, wb) = _same(x.shape[2:], k, s)
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class TUnit3D(nn.Module):
    def __init__(self, cin, cout, k=(1, 1, 1), s=(1, 1, 1), logits=False):
        super().__init__()
        self.k, self.s, self.is_logits = k, s, logits
        self.conv3d = nn.Conv3d(cin, cout, k, s, padding=0, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.k, self.s))
        return x if self.is_logits else F.relu(self.bn(x))


def _tmaxpool(x, k, s):
    return F.max_pool3d(_pad_same(x, k, s), k, s)


class TInceptionModule(nn.Module):
    def __init__(self, cin, o):
        super().__init__()
        self.b0, self.b1a = TUnit3D(cin, o[0]), TUnit3D(cin, o[1])
        self.b1b = TUnit3D(o[1], o[2], (3, 3, 3))
        self.b2a, self.b2b = TUnit3D(cin, o[3]), TUnit3D(o[3], o[4], (3, 3, 3))
        self.b3b = TUnit3D(cin, o[5])

    def forward(self, x):
        pooled = _tmaxpool(x, (3, 3, 3), (1, 1, 1))
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], 1
        )


class TI3D(nn.Module):
    def __init__(self, classes=400):
        super().__init__()
        self.Conv3d_1a_7x7 = TUnit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = TUnit3D(64, 64)
        self.Conv3d_2c_3x3 = TUnit3D(64, 192, (3, 3, 3))
        spec = {
            "3b": (192, [64, 96, 128, 16, 32, 32]),
            "3c": (256, [128, 128, 192, 32, 96, 64]),
            "4b": (480, [192, 96, 208, 16, 48, 64]),
            "4c": (512, [160, 112, 224, 24, 64, 64]),
            "4d": (512, [128, 128, 256, 24, 64, 64]),
            "4e": (512, [112, 144, 288, 32, 64, 64]),
            "4f": (528, [256, 160, 320, 32, 128, 128]),
            "5b": (832, [256, 160, 320, 32, 128, 128]),
            "5c": (832, [384, 192, 384, 48, 128, 128]),
        }
        for name, (cin, o) in spec.items():
            setattr(self, f"Mixed_{name}", TInceptionModule(cin, o))
        self.logits = TUnit3D(1024, classes, logits=True)

    def pool(self, x):
        x = _tmaxpool(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))
        x = _tmaxpool(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)), (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _tmaxpool(x, (3, 3, 3), (2, 2, 2))
        for name in ("4b", "4c", "4d", "4e", "4f"):
            x = getattr(self, f"Mixed_{name}")(x)
        x = _tmaxpool(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        return F.avg_pool3d(x, x.shape[2:])  # = the port's AvgPool3d((2, 7, 7)) at 16 x 224

    def forward(self, x):
        return self.logits(self.pool(x)).flatten(1)


def _randomise(model, seed):
    """He-normal convs (so activations keep their scale through ~50 layers), random
    batch-norm affine and running statistics, so every tensor's import matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def _save(model, path):
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def _assert_close(ours, ref, what):
    ours, ref = np.asarray(ours), ref.detach().numpy()
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"{what}: max abs err / max abs output = {err:.2e}")
    assert err < 1e-4, (what, err)


@pytest.fixture(scope="module")
def torch_inception(tmp_path_factory):
    model = _randomise(TFIDInception(), 0)
    return model, _save(model, tmp_path_factory.mktemp("w") / "inception.safetensors")


@pytest.mark.parity
def test_inception_matches_torch_layout(torch_inception):
    tmodel, path = torch_inception
    ours = inception.load_inception(path)
    rng = np.random.default_rng(0)
    # The network on an odd, non-square input (75 x 75 is the smallest it takes).
    x = rng.uniform(-1, 1, (2, 83, 79, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x).permute(0, 3, 1, 2))
    _assert_close(netlib.jit_method(ours)(jnp.asarray(x)), ref, "inception pool3")
    # pytorch-fid's preprocessing: uint8 -> [0, 1] -> bilinear upsize -> 2x - 1.
    images = rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    with torch.no_grad():
        t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        t = F.interpolate(t, size=(77, 77), mode="bilinear", align_corners=False)
        ref = tmodel(2 * t - 1)
    feats = netlib.jit_method(ours, "features", size=77)(jnp.asarray(images))
    _assert_close(feats, ref, "inception features()")


def test_inception_import_names_every_bad_key(torch_inception, tmp_path):
    tmodel, _ = torch_inception
    sd = {k: v.contiguous() for k, v in tmodel.state_dict().items()}
    del sd["Mixed_6b.branch7x7_2.conv.weight"]
    sd["Mixed_9z.conv.weight"] = torch.zeros(3)
    sd["Mixed_5b.branch1x1.bn.running_var"] = torch.ones(7)
    safetensors_torch.save_file(sd, tmp_path / "bad.safetensors")
    with pytest.raises(WeightImportError) as e:
        inception.load_inception(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "bad.safetensors" in msg and "Mixed_6b.branch7x7_2.conv.weight" in msg
    assert "Mixed_9z.conv.weight" in msg and "Mixed_5b.branch1x1.bn.running_var" in msg
    assert "fc.weight" not in msg  # the classifier is ignored, not unexpected


@pytest.mark.parity
@pytest.mark.slow(reason="builds I3D in JAX and in PyTorch and compares them")
def test_i3d_matches_torch_layout(tmp_path):
    tmodel = _randomise(TI3D(), 1)
    path = _save(tmodel, tmp_path / "i3d.safetensors")
    ours = i3d.load_i3d(path)
    rng = np.random.default_rng(1)
    # Odd sizes exercise both branches of the SAME padding rule.
    x = rng.uniform(-1, 1, (2, 13, 37, 33, 3)).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x).permute(0, 4, 1, 2, 3)
        ref_logits, ref_pool = tmodel(tx), tmodel.pool(tx).flatten(1)
    _assert_close(netlib.jit_method(ours)(jnp.asarray(x)), ref_logits, "i3d logits")
    _assert_close(netlib.jit_method(ours, "pool")(jnp.asarray(x)), ref_pool, "i3d pool")
    clips = rng.integers(0, 256, (1, 16, 24, 24, 3), dtype=np.uint8)
    with torch.no_grad():
        t = torch.from_numpy(clips).float().permute(0, 1, 4, 2, 3).flatten(0, 1)
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
        t = t.reshape(1, 16, 3, 32, 32).permute(0, 2, 1, 3, 4) / 127.5 - 1
        ref = tmodel(t)
    feats = netlib.jit_method(ours, "features", size=32)(jnp.asarray(clips))
    _assert_close(feats, ref, "i3d features()")


def test_same_pads_follow_tensorflow():
    # out = ceil(n / s); total pad = max((out - 1) s + k - n, 0), the smaller half first.
    for n in range(1, 12):
        for k in (1, 2, 3, 7):
            for s in (1, 2):
                ((a, b),) = netlib.same_pads([n], [k], [s])
                out = -(-n // s)
                assert a + b == max((out - 1) * s + k - n, 0) and b - a in (0, 1)


def test_standard_features_need_both_files(tmp_path):
    from nuwa_jax.evaluate import features

    with pytest.raises(FileNotFoundError, match="inception_v3_fid.safetensors: missing"):
        features.load_extractor("standard", str(tmp_path))
    with pytest.raises(ValueError, match="unknown kind 'clip'"):
        features.load_extractor("clip", str(tmp_path))


@pytest.mark.parity
@pytest.mark.slow(reason="runs Inception in JAX and in PyTorch and compares them")
def test_standard_extractor_matches_torch(torch_inception, tmp_path):
    from nuwa_jax.evaluate import standard

    tinc, inc_path = torch_inception
    ti3d = _randomise(TI3D(), 2)
    os.symlink(inc_path, tmp_path / standard.INCEPTION_FILE)
    _save(ti3d, tmp_path / standard.I3D_FILE)
    ex = standard.StandardFeatures.load(str(tmp_path), image_size=75, clip_size=32, batch_size=16)
    assert ex.describe()["sha256"][standard.I3D_FILE]
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    clips = rng.integers(0, 256, (2, 16, 24, 24, 3), dtype=np.uint8)
    with torch.no_grad():
        t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        ref_img = tinc(2 * F.interpolate(t, size=(75, 75), mode="bilinear") - 1)
        t = torch.from_numpy(clips).float().permute(0, 1, 4, 2, 3).flatten(0, 1)
        t = F.interpolate(t, size=(32, 32), mode="bilinear").reshape(2, 16, 3, 32, 32)
        ref_clip = ti3d(t.permute(0, 2, 1, 3, 4) / 127.5 - 1)
    _assert_close(ex.image_features(images), ref_img, "StandardFeatures.image_features")
    _assert_close(ex.clip_features(clips), ref_clip, "StandardFeatures.clip_features")
