"""The model-randomisation sanity check on the pretrained EfficientNet-Lite0: a method
that reads the classifier changes with it, a class-agnostic one cannot, and the model
is left as it was."""

from __future__ import annotations

import pytest
from conftest import ModelState

from camwidget import Explainer, samples, zoo
from camwidget.sanity import randomised_classifier


@pytest.fixture(scope="module")
def lite0():
    model, preprocess, labels = zoo.load("efficientnet_lite0")
    return Explainer(model, preprocess, labels)


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_a_method_that_reads_the_classifier_changes_with_it(lite0, method):
    before = ModelState.of(lite0.model)
    rho = randomised_classifier(lite0, samples.load("chelsea"), method)
    assert rho < 0.9
    before.assert_same(lite0.model)


@pytest.mark.parametrize("method", ["eigencam", "fem"])
def test_a_class_agnostic_method_cannot_change(lite0, method):
    assert randomised_classifier(lite0, samples.load("chelsea"), method) == pytest.approx(1.0)
