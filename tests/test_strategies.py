import io
import math

import pytest
import torch

from nasfast.genotype import ZOO, Genotype
from nasfast.strategies import PPOController, Proposal, RandomSearch, make_strategy

SIZES = Genotype.decision_sizes()
TARGET = ZOO["arch1"].decisions()


@pytest.fixture(autouse=True)
def one_thread():
    """The controller's ops are tiny: on a busy 2-core machine, threads only add waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_reward(proposal: Proposal) -> float:
    """The share of decisions equal to a target design's: a reward a policy can climb."""
    return sum(a == b for a, b in zip(proposal.genotype.decisions(), TARGET)) / len(TARGET)


def run(strategy, steps: int, batch: int = 1):
    """Samples, scores and updates `steps` times; returns the proposals."""
    proposals = []
    for _ in range(steps):
        scored = [strategy.sample() for _ in range(batch)]
        strategy.update(scored, [synthetic_reward(p) for p in scored])
        proposals += scored
    return proposals


def parameters(strategy: PPOController):
    return [p.detach().clone() for p in strategy.controller.parameters()]


def through_disk(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", ["ppo", "random"])
def test_samples_are_valid_proposals(name):
    strategy = make_strategy(name, seed=1)
    for _ in range(30):
        p = strategy.sample()
        assert len(p.genotype.decisions()) == 19 and all(0 <= d < n for d, n in zip(p.genotype.decisions(), SIZES))
        assert isinstance(p.log_prob, float) and p.log_prob < 0


@pytest.mark.parametrize("name", ["ppo", "random"])
def test_same_seed_same_samples_other_seed_others(name):
    a, b, c = make_strategy(name, seed=7), make_strategy(name, seed=7), make_strategy(name, seed=8)
    assert [a.sample() for _ in range(5)] == [b.sample() for _ in range(5)]
    assert [a.sample().genotype for _ in range(5)] != [c.sample().genotype for _ in range(5)]


@pytest.mark.parametrize("name", ["ppo", "random"])
def test_leaves_the_global_generator_alone(name):
    before = torch.get_rng_state()
    strategy = make_strategy(name, seed=3)
    run(strategy, 3, batch=2)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name, options", [("ppo", {}), ("ppo", {"replay": 3, "entropy_weight": 0.01}),
                                           ("random", {})])
def test_state_dict_continues_exactly(name, options):
    """Saved after k updates, loaded into a fresh instance: the same samples, log-probabilities,
    statistics and (bitwise) parameters as the instance that was never interrupted."""
    uninterrupted = make_strategy(name, seed=5, **options)
    run(uninterrupted, 4, batch=2)
    saved = through_disk(uninterrupted.state_dict())
    resumed = make_strategy(name, seed=99, **options)
    resumed.load_state_dict(saved)
    for step in range(4):
        a, b = [uninterrupted.sample() for _ in range(2)], [resumed.sample() for _ in range(2)]
        assert a == b
        rewards = [synthetic_reward(p) for p in a]
        assert uninterrupted.update(a, rewards) == resumed.update(b, rewards)
    if name == "ppo":
        for x, y in zip(parameters(uninterrupted), parameters(resumed)):
            assert torch.equal(x, y)
        assert uninterrupted.samples == resumed.samples == 16 and resumed.updates == 8
    assert through_disk(uninterrupted.state_dict()).keys() == saved.keys()


def test_state_dict_is_a_copy():
    ppo = PPOController(seed=0, lr=1e-2)
    state = ppo.state_dict()
    frozen = [t.clone() for t in state["controller"].values()]
    run(ppo, 3)
    assert all(torch.equal(a, b) for a, b in zip(frozen, state["controller"].values()))


def test_loading_the_state_of_another_strategy_fails():
    with pytest.raises(ValueError, match="expected the state of a 'ppo' strategy, got one of 'random'"):
        PPOController(seed=0).load_state_dict(RandomSearch(seed=0).state_dict())
    with pytest.raises(ValueError, match="expected the state of a 'random' strategy"):
        RandomSearch(seed=0).load_state_dict(PPOController(seed=0).state_dict())


def test_controller_weights_are_uniform_in_a_tenth():
    controller = PPOController(seed=0).controller
    assert controller.lstm.num_layers == 2 and controller.lstm.hidden_size == 100
    assert [head.out_features for head in controller.heads] == SIZES
    for name, p in controller.named_parameters():
        assert p.abs().max() <= 0.1, name
        if p.numel() >= 100:  # biases too: U(-0.1, 0.1) has standard deviation 0.0577
            assert 0.045 < p.std() < 0.07, name


def test_recorded_log_prob_is_the_policys():
    ppo = PPOController(seed=1)
    proposals = [ppo.sample() for _ in range(10)]
    log_prob, _ = ppo.controller.evaluate(torch.tensor([p.genotype.decisions() for p in proposals]))
    assert log_prob.tolist() == pytest.approx([p.log_prob for p in proposals], abs=1e-4)


def test_each_decision_depends_on_the_tokens_chosen_before_it():
    controller = PPOController(seed=0).controller
    base = torch.tensor([ZOO["arch0"].decisions()])
    for k in (0, 6, 10, 17):  # change decision k only
        changed = base.clone()
        changed[0, k] = (changed[0, k] + 1) % SIZES[k]
        before, after = controller.step_log_probs(base), controller.step_log_probs(changed)
        for step in range(19):
            if step <= k:  # causal: what comes before k (and k itself) is unchanged
                assert torch.equal(before[step], after[step])
            else:  # every later decision's distribution moves (at initialisation, by little)
                assert not torch.equal(before[step], after[step]), (k, step)
        assert (before[k + 1] - after[k + 1]).abs().max() > 1e-4


def test_random_search_draws_uniform_genotypes():
    """Genotype.random is uniform (test_genotype): random search must be its draws, seeded."""
    random_search, generator = RandomSearch(seed=0), torch.Generator().manual_seed(0)
    assert [random_search.sample().genotype.decisions() for _ in range(20)] == \
        [Genotype.random(generator).decisions() for _ in range(20)]
    assert random_search.sample().log_prob == pytest.approx(-sum(math.log(n) for n in SIZES))
    assert random_search.update([random_search.sample()], [0.5]) == {}


def test_ppo_learns_where_random_search_does_not():
    ppo, random_search = PPOController(seed=0, lr=5e-3, ppo_epochs=2), RandomSearch(seed=0)
    rewards = {}
    for name, strategy in (("ppo", ppo), ("random", random_search)):
        rewards[name] = [synthetic_reward(p) for p in run(strategy, 200)]
    late_ppo, late_random = sum(rewards["ppo"][-40:]) / 40, sum(rewards["random"][-40:]) / 40
    assert late_random < 0.25 and late_ppo > late_random + 0.25, (late_ppo, late_random)


def test_ppo_learns_at_the_paper_s_settings_within_a_third_of_its_budget():
    """SPEC section 4's values (Adam lr 1e-4, clip 0.1, 4 passes, baseline decay 0.95) with one
    update per candidate, as the search makes them: a choice that earns the reward goes from one
    sample in four to nearly every sample within 300 of the paper's 1000 candidates."""
    ppo = PPOController(seed=0)
    chosen = []
    for _ in range(300):
        proposal = ppo.sample()
        chosen.append(proposal.genotype.decisions()[0] == 3)  # block 0's first input: encoder output 3
        ppo.update([proposal], [float(chosen[-1])])
    assert sum(chosen[:50]) / 50 < 0.4 and sum(chosen[-50:]) / 50 > 0.8, (sum(chosen[:50]), sum(chosen[-50:]))


def test_updates_use_the_log_prob_recorded_at_sampling():
    """A positive advantage with a ratio already past 1 + clip gives no gradient: PPO must
    compare with the probability the proposal was sampled with, not with the current one."""
    ppo = PPOController(seed=2, ppo_epochs=1)
    first, second = ppo.sample(), ppo.sample()
    ppo.update([first], [0.0])  # initialises the baseline: advantage 0, nothing learnt
    start = parameters(ppo)
    stale = Proposal(second.genotype, second.log_prob - 1.0)  # ratio e > 1.1
    stats = ppo.update([stale], [1.0])
    assert stats["advantage"] > 0
    assert all(torch.equal(x, y) for x, y in zip(start, parameters(ppo)))
    ppo.update([second], [1.0])  # ratio 1: the update moves the policy
    assert not all(torch.equal(x, y) for x, y in zip(start, parameters(ppo)))


@pytest.mark.parametrize("advantage_sign, log_ratio, moves", [
    (+1, +1.0, False),  # ratio e > 1 + clip: the clipped term, a constant, is the smaller
    (+1, -1.0, True),   # ratio 1/e < 1 - clip: min takes the unclipped ratio * A
    (-1, -1.0, False),  # ratio 1/e < 1 - clip: the clipped term (1 - clip) * A is the smaller
    (-1, +1.0, True),   # ratio e > 1 + clip: min takes the unclipped ratio * A
])
def test_the_surrogate_is_the_pessimistic_min_of_the_ratio_and_its_clip_to_both_bounds(advantage_sign, log_ratio,
                                                                                       moves):
    """SPEC section 4: PPO's clipped ratio, min(r A, clip(r, 1 - 0.1, 1 + 0.1) A): the gradient is zero
    exactly where the clip bounds the ratio on the side the advantage favours."""
    ppo = PPOController(seed=2, ppo_epochs=1)
    first, second = ppo.sample(), ppo.sample()
    ppo.update([first], [0.5])  # initialises the baseline: advantage 0, nothing learnt
    start = parameters(ppo)
    stale = Proposal(second.genotype, second.log_prob - log_ratio)
    stats = ppo.update([stale], [0.5 + advantage_sign * 0.5])
    assert stats["advantage"] * advantage_sign > 0
    changed = not all(torch.equal(x, y) for x, y in zip(start, parameters(ppo)))
    assert changed == moves


def test_out_of_order_batches_and_baseline():
    ppo = PPOController(seed=2)
    first, second, third = ppo.sample(), ppo.sample(), ppo.sample()
    stats = ppo.update([third, first], [0.2, 0.6])  # scored out of order, as one batch
    assert stats["baseline"] == pytest.approx(0.95 * 0.2 + 0.05 * 0.6)
    assert stats["advantage"] == pytest.approx((0.2 + 0.6) / 2 - stats["baseline"])
    assert set(stats) == {"loss", "entropy", "baseline", "advantage"}
    assert all(isinstance(v, float) for v in stats.values())
    stats = ppo.update([second], [1.0])
    assert stats["baseline"] == pytest.approx(0.95 * (0.95 * 0.2 + 0.05 * 0.6) + 0.05)


@pytest.mark.parametrize("call, message", [
    (lambda: make_strategy("evolution"), "unknown strategy 'evolution'"),
    (lambda: make_strategy("random", lrr=1), r"unknown strategy options \['lrr'\]"),
    (lambda: make_strategy("ppo", clip=0), "clip must be a number in"),
    (lambda: make_strategy("ppo", ppo_epochs=1.5), "ppo_epochs must be an integer >= 1"),
    (lambda: make_strategy("ppo", lr=-1), "lr must be a number > 0"),
    (lambda: PPOController().update([PPOController().sample()], []), "1 proposals but 0 rewards"),
    (lambda: PPOController().update([PPOController().sample()], [float("nan")]), "finite numbers"),
    (lambda: RandomSearch().update([RandomSearch().sample()], [None]), "finite numbers"),
])
def test_user_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_random_search_accepts_the_ppo_options():
    options = dict(lr=1e-4, clip=0.1, ppo_epochs=4, baseline_decay=0.95, entropy_weight=0.0)
    assert isinstance(make_strategy("random", seed=0, **options), RandomSearch)


def test_replay_adds_the_k_latest_earlier_proposals_to_each_update():
    """With the baseline following the latest reward (decay 0), replaying is exactly handing the
    update the remembered proposals along with the new one."""
    options = dict(seed=3, lr=1e-3, ppo_epochs=2, baseline_decay=0.0)
    replaying = PPOController(replay=2, **options)
    proposals = [replaying.sample() for _ in range(5)]
    rewards = [0.2, 0.9, 0.4, 0.7, 0.1]
    replaying.update(proposals[:1], rewards[:1])
    replaying.update(proposals[1:2], rewards[1:2])
    for new in (2, 3, 4):
        state = {**replaying.state_dict(), "memory": []}
        explicit, alone = PPOController(**options), PPOController(**options)
        explicit.load_state_dict(state)
        alone.load_state_dict(state)
        explicit.update(proposals[new - 2:new + 1], rewards[new - 2:new + 1])
        alone.update(proposals[new:new + 1], rewards[new:new + 1])
        replaying.update(proposals[new:new + 1], rewards[new:new + 1])
        assert all(torch.equal(x, y) for x, y in zip(parameters(replaying), parameters(explicit))), new
        assert not all(torch.equal(x, y) for x, y in zip(parameters(replaying), parameters(alone))), new


def test_entropy_weight_moves_the_update_towards_a_more_uncertain_policy():
    measured_on = torch.tensor([RandomSearch(seed=0).sample().genotype.decisions() for _ in range(64)])

    def entropy_after_updates(entropy_weight: float) -> float:
        ppo = PPOController(seed=4, lr=1e-2, entropy_weight=entropy_weight)
        run(ppo, 3, batch=2)
        with torch.no_grad():
            return ppo.controller.evaluate(measured_on)[1].mean().item()

    assert entropy_after_updates(0.1) > entropy_after_updates(0.0) + 1e-3


@pytest.mark.parametrize("name", ["ppo", "random"])
def test_a_state_lacking_a_part_is_refused_by_name_and_loads_nothing(name):
    torch.set_num_threads(1)  # the controller's ops are tiny: on a busy machine threads only wait
    saved = make_strategy(name, seed=1).state_dict()
    parts = [key for key in saved if key != "strategy"]
    strategy = make_strategy(name, seed=0)
    for part in parts:  # every part that state_dict saves is one that load_state_dict requires
        with pytest.raises(ValueError, match=rf"^'{name}' strategy state lacks \['{part}'\]$"):
            strategy.load_state_dict({key: value for key, value in saved.items() if key != part})
    assert strategy.sample() == make_strategy(name, seed=0).sample()  # still the seed-0 strategy
