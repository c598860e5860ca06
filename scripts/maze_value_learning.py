"""How fast does a value model learn Maze-FO's values? The experiment behind docs/cpu-scale.md.

Trains a fresh trunk (``--model``) with value heads only (no LM term, no CQL unless ``--cql``)
on a Maze-FO dataset's chain rows and, every ``--every`` steps, reads the value map of all 25
start cells (eval/value_map.py's quantities): ``v_rho`` is the Spearman ρ of V with the optimal
values, ``last``/``sum`` rerank the four moves by Q at the newline or by Σ_tokens (Q − V) and
report the greedy-move accuracy, the reranked return and its normalised score.

``--level token`` is ILQL's token-level loss (the package's ``ilql_loss``); ``--level turn``
backs up only whole turns (Q at the action's newline toward ``r + γ V(s')``, V at the last
observation token fit by expectile to the target Q there), which skips the two intra-turn hops
per move; ``--turn-all`` is the package's ``backup="turn"`` (every token of the move regresses
to the turn's target, V at every token fits the turn's target Q). ``--algo mc`` regresses Q on
the returns-to-go (the package's ``mc_loss``); ``--algo sup`` regresses Q and V on the tabular
ILQL fixed point (scripts/maze_value_ceiling.py), the representation's ceiling without TD.
``--aux-mc W`` adds an MC-return head on the same trunk; ``--mix-mc λ`` mixes the return-to-go
into the turn-level Q target (``--mix-mc-steps N``: λ falls linearly to 0 over the first N steps,
then pure TD; ``--mc-boot``: that return bootstraps with γ^K V at a truncated record's cut
instead of ending there). ``--aux-lm W`` adds a world-model loss on the same trunk: next-token
cross-entropy, through the trunk's own (tied) LM head, on the observation tokens of the row and
of the next observation appended after the move (one pass over row + next observation; the
value heads read the row's positions, which the appended tokens cannot change). ``--n-step N``
backs Q up over N moves of the behaviour from the same record, ``Σ_{k<N} γ^k r_{t+k} + γ^N
V(s_{t+N})``: no bootstrap where the episode terminates sooner, γ^m V(s_cut) where the record
is cut after m < N moves. ``dec`` reranks by Q at the move word
(where the four moves part), ``tgt`` by Q at the newline from the Polyak (EMA) weights;
``--dump`` prints every start cell's V and per-move Q (dec / last / tgt / ``−1 + γ V(next)``)
at the end.

    python scripts/maze_value_learning.py --algo ilql --level turn --steps 2000 --bs 64 \
        --polyak 0.05 --tau 0.9 --gamma 0.9 --bias -5 --data DATA_DIR
"""

import argparse
import copy
import random
import time

import numpy as np
import torch
from torch import nn

from lmrlgym.algos import rl as common
from lmrlgym.algos.backbone import last_token_states
from lmrlgym.algos.ilql import ILQLConfig, bootstrap_values, ilql_loss
from lmrlgym.algos.mc import MCConfig, mc_loss
from lmrlgym.data.io import read_episodes
from lmrlgym.envs.maze import COMMANDS, fo_context_turns, load_maze
from lmrlgym.models.factory import build_model
from lmrlgym.models.heads import make_head
from lmrlgym.models.render import TokenCache, collate, render
from lmrlgym.models.tokenizer import train_tokenizer

p = argparse.ArgumentParser()
p.add_argument("--algo", default="ilql")
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--bs", type=int, default=64)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--gamma", type=float, default=0.99)
p.add_argument("--tau", type=float, default=0.9)
p.add_argument("--cql", type=float, default=0.0)
p.add_argument("--polyak", type=float, default=0.005)
p.add_argument("--model", default="gpt2-tiny")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--every", type=int, default=250)
p.add_argument("--head", default="mlp")
p.add_argument("--bias", type=float, default=0.0)
p.add_argument("--level", default="token")
p.add_argument("--no-target-trunk", action="store_true")
p.add_argument("--turn-all", action="store_true")
p.add_argument("--mix-mc", type=float, default=0.0,
               help="λ: Q targets (1 − λ)(r + γ V(s')) + λ · (MC return-to-go)")
p.add_argument("--mix-mc-steps", type=int, default=0,
               help="anneal --mix-mc linearly to 0 over this many steps (0: constant λ)")
p.add_argument("--mc-boot", action="store_true",
               help="--mix-mc's return bootstraps at a truncated episode's cut: G + γ^K V(s_cut)")
p.add_argument("--aux-mc", type=float, default=0.0,
               help="weight of an auxiliary head on the same trunk regressing MC returns-to-go")
p.add_argument("--aux-lm", type=float, default=0.0,
               help="weight of next-token cross-entropy on the observation tokens (row + next obs)")
p.add_argument("--n-step", type=int, default=1,
               help="turn-level Q target over this many behaviour moves, then bootstrapped")
p.add_argument("--dump", action="store_true", help="print the per-move Q table at the end")
p.add_argument("--data", required=True)
args = p.parse_args()
if (args.aux_lm or args.n_step != 1) and (args.level, args.algo) != ("turn", "ilql"):
    p.error("--aux-lm and --n-step need --level turn --algo ilql")
if args.aux_lm and not args.turn_all:
    p.error("--aux-lm needs --turn-all")
if args.n_step < 1:
    p.error(f"--n-step must be at least 1, got {args.n_step}")
torch.manual_seed(args.seed)
random.seed(args.seed)
np.random.seed(args.seed)
torch.set_num_threads(1)

eps, _ = read_episodes(args.data)
tok = train_tokenizer((t.text for e in eps for t in e.turns), vocab_size=512)
cache = TokenCache(tok)
rows = []
for k, e in enumerate(eps):
    rows += [
        s
        for s in render(
            e, tok, fo_context_turns, 256, args.gamma, "turn", episode_id=k, token_cache=cache
        )
        if s.action_mask.any()
    ]
print(
    "rows",
    len(rows),
    "moves tokens",
    [tok(m + "\n", add_special_tokens=False)["input_ids"] for m in COMMANDS],
)
# per row (one move each): moves K to the record's end, index of its cut observation (-1: none)
cut_texts = sorted({e.turns[-1].text for e in eps if e.truncated})
row_k, row_cut = [], []
for e in eps:
    n = sum(t.is_action for t in e.turns)
    row_k += range(n, 0, -1)
    row_cut += [cut_texts.index(e.turns[-1].text) if e.truncated else -1] * n
assert len(row_k) == len(rows)
row_k, row_cut = torch.tensor(row_k, dtype=torch.float32), torch.tensor(row_cut)


def n_step_plan(rewards, k_left, gamma, n):
    """Per row (rows of one record consecutive, one move each; ``k_left`` = moves from this row to
    the record's end, this one included): m = min(n, k_left) moves summed, the discounted reward
    sum over them, and the row whose next state bootstraps (its V is 0 where that row ends a
    terminated episode, V(s_cut) where it ends a truncated record)."""
    k = np.asarray(k_left, np.int64)
    m = np.minimum(n, k)
    g = np.zeros(len(k))
    for j in range(n):  # the j-th move ahead counts where the record still has it
        live = j < m
        g[live] += gamma**j * np.asarray(rewards, np.float64)[np.flatnonzero(live) + j]
    return m, g, np.arange(len(k)) + m - 1


# hand check: a record of 3 moves (rewards −1, −1, 0; terminated) and one of 2 (cut), n 2, γ 0.5
_m, _g, _j = n_step_plan([-1, -1, 0, -1, -1], [3, 2, 1, 2, 1], 0.5, 2)
assert _m.tolist() == [2, 2, 1, 2, 1] and _j.tolist() == [1, 2, 2, 4, 4]
assert np.allclose(_g, [-1.5, -1.0, 0.0, -1.5, -1.0])
row_r = [float(s.rewards.sum()) for s in rows]
ns_m, ns_g, ns_j = (torch.tensor(x) for x in n_step_plan(row_r, row_k, args.gamma, args.n_step))
cut_ids = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]] for t in cut_texts]
cut_batch = torch.full((len(cut_ids), max(map(len, cut_ids))), tok.pad_token_id)
cut_mask = torch.zeros_like(cut_batch)
for i, c in enumerate(cut_ids):
    cut_batch[i, : len(c)], cut_mask[i, : len(c)] = torch.tensor(c), 1
lm = build_model(args.model, tok, dropout=0.0)
d = lm.get_output_embeddings().in_features
V = len(tok)
heads = nn.ModuleDict(
    {
        "q1": make_head(args.head, d, V, args.bias),
        "q2": make_head(args.head, d, V, args.bias),
        "v": make_head(args.head, d, 1, args.bias),
        "mc": make_head(args.head, d, V, args.bias),
    }
)
target = nn.ModuleDict(
    {"q1": copy.deepcopy(heads["q1"]), "q2": copy.deepcopy(heads["q2"]), "trunk": copy.deepcopy(lm)}
).requires_grad_(False)
opt = torch.optim.AdamW(
    [*lm.parameters(), *heads.parameters()], lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0
)
cfg = ILQLConfig(
    task="Maze-FO-v0", gamma=args.gamma, tau=args.tau, cql_weight=args.cql, bc_weight=0.0
)
mcfg = MCConfig(task="Maze-FO-v0", gamma=args.gamma, cql_weight=args.cql, bc_weight=0.0)

maze = load_maze("double_t_maze")
cells = list(maze.start_cells)
true_v = {c: -(maze.distance[c] - 1) for c in cells}
bos = tok.bos_token_id
move_ids = [tok(m + "\n", add_special_tokens=False)["input_ids"] for m in COMMANDS]


@torch.no_grad()
def probe(dump=False):
    lm.eval()
    # one row per (cell, move): BOS + obs + move
    seqs, meta = [], []
    for c in [*cells, *(c for c in maze.fo_texts if c not in cells and c != maze.goal)]:
        obs = tok(maze.fo_texts[c], add_special_tokens=False)["input_ids"]
        for j, m in enumerate(move_ids):
            seqs.append([bos] + obs + m)
            meta.append((c, j, len(obs) + 1))
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    h = lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    th = target["trunk"].base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    vmap, score_last, score_sum, score_dec, score_tgt = {}, {}, {}, {}, {}
    for i, (c, j, n0) in enumerate(meta):
        m = move_ids[j]
        hs = h[i, n0 - 1 : n0 - 1 + len(m)]  # states choosing each action token
        if args.algo in ("ilql", "sup"):
            q = torch.minimum(heads["q1"](hs), heads["q2"](hs))
            v = heads["v"](hs)
        else:
            q = heads["q1"](hs)
            v = torch.zeros(len(m))
        qa = q[torch.arange(len(m)), torch.tensor(m)]
        vmap[c] = float(v[0]) if args.algo in ("ilql", "sup") else None
        score_last[c, j] = float(qa[-1])
        score_sum[c, j] = float((qa - v).sum())
        score_dec[c, j] = float(qa[1])
        if args.algo in ("ilql", "sup"):  # the Polyak (EMA) weights: target trunk and target Q heads
            ths = th[i, n0 - 1 : n0 - 1 + len(m)]
            tq = torch.minimum(target["q1"](ths), target["q2"](ths))
            score_tgt[c, j] = float(tq[torch.arange(len(m)), torch.tensor(m)][-1])
    lm.train()
    if dump:  # per start cell: distance, V, and per move Q(dec), Q(last), −1 + γ V(next)
        for c in cells:
            row = [f"{c} d={maze.distance[c]} V={vmap[c]:.2f} opt={maze.optimal_command(c)[5:]}:"]
            for j, m in enumerate(COMMANDS):
                n = maze.transition[c, m]
                boot = 0.0 if n == maze.goal else -1 + args.gamma * vmap[n]
                row.append(f"{m[5:]} {score_dec[c, j]:.2f}/{score_last[c, j]:.2f}/"
                           f"{score_tgt[c, j]:.2f}/{boot:.2f}")
            print("  ".join(row))
    out = {}
    for name, sc in (("last", score_last), ("sum", score_sum), ("dec", score_dec),
                     ("tgt", score_tgt)):
        if not sc:
            continue
        pol = {c: max(range(4), key=lambda j: sc[c, j]) for c in cells}
        acc = np.mean([COMMANDS[pol[c]] == maze.optimal_command(c) for c in cells])
        rets = []
        for s in cells:
            c, ret = s, 0
            for _ in range(100):
                c = maze.transition[c, COMMANDS[pol[c]]]
                if c == maze.goal:
                    break
                ret -= 1
            else:
                ret = -101
            rets.append(ret)
        R = np.mean(rets)
        norm = (
            50 * (R + 401) / (-51.46 + 401)
            if R < -51.46
            else 50 + 50 * (R + 51.46) / (-6.84 + 51.46)
        )
        qmax = {c: max(sc[c, j] for j in range(4)) for c in cells}
        out[name] = dict(
            acc=round(acc, 2),
            ret=round(R, 1),
            norm=round(norm, 1),
            rho=round(spearmanr([qmax[c] for c in cells], [true_v[c] for c in cells])[0], 3),
        )
    if args.algo in ("ilql", "sup"):
        out["v_rho"] = round(spearmanr([vmap[c] for c in cells], [true_v[c] for c in cells])[0], 3)
        out["v_range"] = (round(min(vmap.values()), 2), round(max(vmap.values()), 2))
    return out


def spearmanr(a, b):
    def rank(x):
        x = np.asarray(x, float)
        o = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[o] = np.arange(len(x))
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return (0.0,)
    return (float(np.corrcoef(ra, rb)[0, 1]),)


def mix_weight(step):
    """λ of --mix-mc at this step: constant, or linear to 0 over --mix-mc-steps, then pure TD."""
    if not args.mix_mc_steps:
        return args.mix_mc
    return args.mix_mc * max(0.0, 1 - (step - 1) / args.mix_mc_steps)


def with_next_obs(batch):
    """Each row followed by its next observation (BOS dropped): ids, mask, and which slots predict
    an observation token (the row's own after BOS, and the appended ones)."""
    seqs, obs = [], []
    for b in range(len(batch.input_ids)):
        n = int(batch.attention_mask[b].sum())
        nxt = batch.next_ids[b, 1 : int(batch.next_attention_mask[b].sum())]  # empty: terminal
        seqs.append(torch.cat([batch.input_ids[b, :n], nxt]))
        obs.append(torch.cat([~batch.action_mask[b, 1:n], torch.ones(len(nxt), dtype=torch.bool)]))
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), tok.pad_token_id)
    mask, pred = torch.zeros_like(ids), torch.zeros(len(seqs), L - 1, dtype=torch.bool)
    for b, (q, o) in enumerate(zip(seqs, obs, strict=True)):
        ids[b, : len(q)], mask[b, : len(q)], pred[b, : len(o)] = q, 1, o
    return ids, mask, pred


def n_step_boot(idx):
    """V (online trunk and head, no grad) after the bootstrap row of each batch row, 0 at a terminal."""
    boot = collate([rows[j] for j in ns_j[idx].tolist()], tok.pad_token_id)
    v = torch.zeros(len(idx))
    has = boot.has_next.nonzero().squeeze(1)
    if len(has):
        h = last_token_states(lm, boot.next_ids[has], boot.next_attention_mask[has])
        v[has] = heads["v"](h).float()
    return v * (~boot.terminal).float()


def forward_turn(batch, idx, lam):
    act, a, r, end = common.step_view(batch)
    B, S = act.shape
    if args.aux_lm:  # one pass over row + next observation; the row's states are unchanged
        ids, mask, pred = with_next_obs(batch)
        h_ext = lm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = lm.get_output_embeddings()(h_ext[:, :-1][pred])
        lm_loss = nn.functional.cross_entropy(logits.float(), ids[:, 1:][pred])
        h_all = h_ext[:, : S + 1]
    else:
        h_all = lm.base_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state
    # turn start slot: action step whose previous slot is not an action step
    prev = torch.cat([torch.zeros(B, 1, dtype=torch.bool), act[:, :-1]], 1)
    start = act & ~prev
    h = h_all[:, :-1]
    q1 = heads["q1"](h[end & act]).gather(-1, a[end & act][:, None]).squeeze(-1)
    q2 = heads["q2"](h[end & act]).gather(-1, a[end & act][:, None]).squeeze(-1)
    v = heads["v"](h_all)
    with torch.no_grad():
        th = (
            h
            if args.no_target_trunk
            else target["trunk"]
            .base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .last_hidden_state[:, :-1]
        )
        tq = (
            torch.minimum(target["q1"](th[end & act]), target["q2"](th[end & act]))
            .gather(-1, a[end & act][:, None])
            .squeeze(-1)
        )

        if args.n_step == 1:
            v_boot = bootstrap_values(lm, heads["v"], batch, v)
            # chain rows: one turn per row (FO). next state value = v_boot
            y = r[end & act] + args.gamma * v_boot
        else:  # the behaviour's next m − 1 moves from the same record, then V
            y = ns_g[idx].float() + args.gamma ** ns_m[idx].float() * n_step_boot(idx)
    if lam:  # chain rows: one turn per row, its return-to-go at the turn's last token
        g = batch.returns[:, 1:][end & act].float()
        if args.mc_boot:  # the cut is no end: bootstrap there, as TD does at the row's end
            with torch.no_grad():
                v_cut = heads["v"](last_token_states(lm, cut_batch, cut_mask)).float()
            cut = row_cut[idx]
            g = g + (cut >= 0) * args.gamma ** row_k[idx] * v_cut[cut.clamp(min=0)]
        y = (1 - lam) * y + lam * g
    if args.turn_all:  # Q at every action token -> the turn's y; V at every one -> target Q_end
        row = act.nonzero()[:, 0]
        qa1 = heads["q1"](h[act]).gather(-1, a[act][:, None]).squeeze(-1)
        qa2 = heads["q2"](h[act]).gather(-1, a[act][:, None]).squeeze(-1)
        ql = (0.5 * (qa1 - y[row]) ** 2).mean() + (0.5 * (qa2 - y[row]) ** 2).mean()
        va = v[:, :-1][act]
        w = torch.where(tq[row] >= va, args.tau, 1 - args.tau)
        vl = (w * 0.5 * (va - tq[row]) ** 2).mean()
        loss = ql + vl
        if args.aux_mc:  # MC returns are fixed per cell: a target the trunk cannot alias away
            g = batch.returns[:, 1:][act].float()
            qmc = heads["mc"](h[act]).gather(-1, a[act][:, None]).squeeze(-1)
            loss = loss + args.aux_mc * (0.5 * (qmc - g) ** 2).mean()
        logs = {"train/q_loss": ql, "train/v_loss": vl, "train/v_mean": va.mean()}
        if args.aux_lm:
            loss = loss + args.aux_lm * lm_loss
            logs["train/lm_loss"] = lm_loss
        return loss, logs
    vs = v[:, :-1][start]
    ql = (0.5 * (q1 - y) ** 2).mean() + (0.5 * (q2 - y) ** 2).mean()
    w = torch.where(tq >= vs, args.tau, 1 - args.tau)
    vl = (w * 0.5 * (vs - tq) ** 2).mean()
    return ql + vl, {"train/q_loss": ql, "train/v_loss": vl, "train/v_mean": vs.mean()}


def forward(batch, idx, lam):
    if args.level == "turn" and args.algo == "ilql":
        return forward_turn(batch, idx, lam)
    act, _, _, _ = common.step_view(batch)
    h_all = lm.base_model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask
    ).last_hidden_state
    h = h_all[:, :-1][act]
    if args.algo == "mc":
        return mc_loss(heads["q1"](h), None, batch, mcfg)
    v = heads["v"](h_all)
    with torch.no_grad():
        th = (
            target["trunk"]
            .base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            .last_hidden_state[:, :-1][act]
        )
        tq1, tq2 = target["q1"](th), target["q2"](th)

        v_boot = bootstrap_values(lm, heads["v"], batch, v)
    return ilql_loss(heads["q1"](h), heads["q2"](h), tq1, tq2, v, v_boot, None, batch, cfg)


if args.algo == "sup":  # targets: the tabular ILQL fixed point (scripts/maze_value_ceiling.py)
    import sys

    sys.path.insert(0, "scripts")
    from maze_value_ceiling import iql_q, transitions

    tab_q, tab_v = iql_q(transitions(args.data, args.gamma), args.gamma, args.tau)
    cell_of = {text: cell for cell, text in maze.fo_texts.items()}
    row_q = []  # per row (one action turn each): (tabular Q of the move, tabular V of the cell)
    for e in eps:
        for k in range(0, len(e.turns) - 1, 2):
            c = cell_of[e.turns[k].text]
            row_q.append((tab_q[c, e.turns[k + 1].text.strip()], tab_v[c]))
    assert len(row_q) == len(rows)


def forward_sup(batch, idx):
    act, a, _, _ = step_view_(batch)
    h = lm.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask
                      ).last_hidden_state[:, :-1]
    row = act.nonzero()[:, 0]
    tq = torch.tensor([row_q[i][0] for i in idx])[row]
    tv = torch.tensor([row_q[i][1] for i in idx])[row]
    q1 = heads["q1"](h[act]).gather(-1, a[act][:, None]).squeeze(-1)
    q2 = heads["q2"](h[act]).gather(-1, a[act][:, None]).squeeze(-1)
    va = heads["v"](h[act])
    ql = (0.5 * (q1 - tq) ** 2).mean() + (0.5 * (q2 - tq) ** 2).mean()
    vl = (0.5 * (va - tv) ** 2).mean()
    return ql + vl, {"train/q_loss": ql, "train/v_loss": vl, "train/v_mean": va.mean()}


step_view_ = common.step_view
rng = np.random.default_rng(args.seed)
t0 = time.time()
order = rng.permutation(len(rows))
pos = 0
for step in range(1, args.steps + 1):
    if pos + args.bs > len(order):
        order = rng.permutation(len(rows))
        pos = 0
    idx = order[pos : pos + args.bs]
    batch = collate([rows[i] for i in idx], tok.pad_token_id)
    pos += args.bs
    loss, m = forward_sup(batch, idx) if args.algo == "sup" else forward(batch, idx, mix_weight(step))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*lm.parameters(), *heads.parameters()], 1.0)
    opt.step()
    if args.algo == "ilql":
        common.polyak_update(target["q1"], heads["q1"], args.polyak)
        common.polyak_update(target["q2"], heads["q2"], args.polyak)
        if not args.no_target_trunk:
            common.polyak_update(target["trunk"], lm, args.polyak)
    if step % args.every == 0:
        print(
            step,
            f"{time.time() - t0:.0f}s",
            {
                k: round(float(v.detach()), 3)
                for k, v in m.items()
                if k in ("train/q_loss", "train/v_loss", "train/v_mean", "train/q_mean", "train/lm_loss")
            },
            probe(args.dump and step == args.steps),
            flush=True,
        )
