"""The synthetic digits' test split is drawn in fonts that training never sees."""

from data import synthetic


def test_test_split_fonts_are_held_out_of_training(monkeypatch, tmp_path):
    used = {"train": set(), "test": set()}
    render = synthetic._render
    current = {}

    def spy(digit, font, rng):
        used[current["split"]].add(font)
        return render(digit, font, rng)

    generate = synthetic.generate

    def tracking_generate(n, seed, *args, split="all", **kwargs):
        current["split"] = split
        return generate(n, seed, *args, split=split, **kwargs)

    monkeypatch.setattr(synthetic, "_render", spy)
    monkeypatch.setattr(synthetic, "generate", tracking_generate)
    (x_train, _), (x_test, _) = synthetic.load(200, 100, seed=0, cache_dir=None)
    assert used["test"] and used["train"]
    assert used["test"] <= set(synthetic.TEST_FONTS)
    assert not used["train"] & set(synthetic.TEST_FONTS)
    assert len(used["train"]) >= 10  # training still sees most styles
