"""Token parity of two pipelines on every calib_data sample (used by the GPU tests)."""


def assert_same_tokens(candidate, reference, calib_samples, max_new_tokens: int = 24) -> None:
    from eov_edge.runtime.generation import GenerationConfig

    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    for sample in calib_samples.values():
        views = sample.read(size=reference.spec.image_size)
        task = sample.task or "caption"
        [got] = candidate.answer(views, task=task, generation=generation)
        [expected] = reference.answer(views, task=task, generation=generation)
        assert got.token_ids == expected.token_ids, sample.id
