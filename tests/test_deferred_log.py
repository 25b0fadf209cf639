"""Training losses are logged from a copy taken at the logging step and written at a later step
(lrfer.engine.deferred_log): no ``.item()`` on the device at the logging step."""

from __future__ import annotations

import torch

from lrfer.engine.deferred_log import DeferredScalars


def test_losses_are_written_later_with_the_values_of_their_step():
    written = []
    deferred = DeferredScalars(lambda values, step: written.append((step, values)))
    loss = torch.tensor(0.5)
    deferred.push({"loss": loss, "acc": torch.tensor(0.25)}, 10)
    assert written == []  # nothing is read at the logging step itself
    loss += 1.0  # the next step changes the tensor (an in-place accumulation): the copy keeps step 10's
    deferred.poll()
    assert written == [(10, {"loss": 0.5, "acc": 0.25})]
    deferred.push({"loss": torch.tensor(2.0)}, 20)
    deferred.flush()
    assert written[-1] == (20, {"loss": 2.0})
    deferred.flush()
    assert len(written) == 2
