"""The trainer's metric sinks: clu's writers, or the log where TensorFlow is missing."""

import logging

from nuwa_jax.train import metric_log


def test_without_tensorflow_scalars_and_progress_go_to_the_log(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(metric_log, "have_clu_writers", lambda: False)
    caplog.set_level(logging.INFO, logger=metric_log.__name__)
    writer, progress = metric_log.create(str(tmp_path), lead=True, num_steps=100)
    assert isinstance(writer, metric_log.LogWriter)
    assert "need TensorFlow" in caplog.text
    writer.write_scalars(7, {"loss": 0.25, "grad_norm": 1.5})
    assert "[7] loss=0.25, grad_norm=1.5" in caplog.text
    writer.write_images(7, {"samples/filmstrip": None})
    writer.flush()

    caplog.clear()
    assert not progress(1, 1000.0)  # the first call only starts the clock
    assert not progress(10, 1030.0)  # < every_secs later
    assert progress(61, 1060.0)  # 60 steps in 60 s
    assert "step 61/100 (61.0%), 1.00 steps/s, ETA 1 min" in caplog.text
    assert progress(100, 1070.0)  # the last step always reports


def test_with_clu_the_default_writer_is_clus(tmp_path):
    writer, progress = metric_log.create(str(tmp_path), lead=False, num_steps=10)
    from clu import metric_writers, periodic_actions

    assert isinstance(writer, metric_writers.MetricWriter)
    assert isinstance(progress, periodic_actions.ReportProgress)
