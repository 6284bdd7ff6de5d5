"""Mesh upkeep of the router (`core.Router`): GRAFT and PRUNE with backoffs, and the
heartbeat (mesh and fanout maintenance, IHAVE gossip, promise and cache upkeep). A
mixin of `Router`: it works on the router's own state and is only ever used through
it."""

from __future__ import annotations

from collections.abc import Iterable

from .events import Event, Grafted, Pruned
from .messages import ControlPrune, PeerInfo
from .params import PROTOCOL_V10


class MeshMaintenance:
    # -- mesh changes ------------------------------------------------------------------
    def _add_to_mesh(self, peer: bytes, topic: str, now: float, events: list[Event]) -> None:
        self._mesh.setdefault(topic, set()).add(peer)
        self._score.graft(peer, topic, now)
        events.append(Grafted(peer, topic))

    def _graft(self, peer: bytes, topic: str, now: float, events: list[Event]) -> None:
        self._add_to_mesh(peer, topic, now, events)
        self._peers[peer].queue.add_graft(topic)

    def _prune(self, peer: bytes, topic: str, now: float, events: list[Event], *,
               px: bool, backoff_s: float | None = None, in_mesh: bool = True) -> None:
        backoff = self.params.prune_backoff_s if backoff_s is None else backoff_s
        if in_mesh:
            self._mesh.get(topic, set()).discard(peer)
            self._score.prune(peer, topic)
            events.append(Pruned(peer, topic))
        self._set_backoff(topic, peer, now + backoff)
        state = self._peers[peer]
        if state.protocol == PROTOCOL_V10:
            state.queue.add_prune(ControlPrune(topic_id=topic))
            return
        exchange: tuple[PeerInfo, ...] = ()
        if px and self._score.score(peer) >= 0:
            others = [p for p in self._topic_peers.get(topic, ())
                      if p != peer and self._score.score(p) >= 0]
            exchange = tuple(PeerInfo(peer_id=p)
                             for p in self._pick(others, self.params.prune_peers))
        state.queue.add_prune(ControlPrune(topic_id=topic, peers=exchange,
                                           backoff=int(backoff)))

    def _set_backoff(self, topic: str, peer: bytes, expiry: float) -> None:
        table = self._backoff.setdefault(topic, {})
        table[peer] = max(table.get(peer, 0.0), expiry)

    def _in_backoff(self, topic: str, peer: bytes, now: float) -> bool:
        expiry = self._backoff.get(topic, {}).get(peer)
        slack = self.params.backoff_slack_heartbeats * self.params.heartbeat_s
        return expiry is not None and now < expiry + slack

    def _graft_candidates(self, topic: str, now: float) -> list[bytes]:
        mesh = self._mesh.get(topic, set())
        return [p for p in self._topic_peers.get(topic, ())
                if p not in mesh and not self._peers[p].direct
                and not self._in_backoff(topic, p, now) and self._score.score(p) >= 0]

    def _pick(self, items: Iterable[bytes], n: int) -> list[bytes]:
        pool = sorted(items)  # sorted first: a seeded rng gives the same choice every run
        if n >= len(pool):
            self._rng.shuffle(pool)
            return pool
        return self._rng.sample(pool, max(n, 0))

    # -- heartbeat ---------------------------------------------------------------------
    def heartbeat(self, now: float) -> list[Event]:
        """Mesh and fanout maintenance, gossip emission, cache and score upkeep. Call
        every `heartbeat_s`; returns the mesh changes it made (the GRAFT/PRUNE/IHAVE
        control it queued goes out with the next flush)."""
        self._ticks += 1
        self._score.refresh(now)
        events: list[Event] = []
        for state in self._peers.values():
            state.ihave_received = state.iwant_asked = state.idontwant_received = 0
            if state.dont_send:
                state.dont_send = {m: t for m, t in state.dont_send.items() if t > now}
        self._check_promises(now)
        self._expire_backoffs(now)
        for mid in [m for m, p in self._pending.items()
                    if now - p.since >= self.params.validation_timeout_s]:
            del self._pending[mid]
            self.counters["validation_timeout"] += 1
        for topic in list(self._mesh):
            self._maintain_mesh(topic, now, events)
        self._maintain_fanout(now)
        self._emit_gossip()
        self._mcache.shift()
        self._seen.purge(now)
        return events

    def _check_promises(self, now: float) -> None:
        for mid in list(self._promises):
            waiting = self._promises[mid]
            for peer, deadline in list(waiting.items()):
                if now >= deadline:
                    del waiting[peer]
                    if peer in self._peers:
                        self.counters["iwant_broken_promises"] += 1
                        self._score.add_penalty(peer)
            if not waiting:
                del self._promises[mid]

    def _expire_backoffs(self, now: float) -> None:
        slack = self.params.backoff_slack_heartbeats * self.params.heartbeat_s
        for topic in list(self._backoff):
            table = {p: t for p, t in self._backoff[topic].items() if now < t + slack}
            if table:
                self._backoff[topic] = table
            else:
                del self._backoff[topic]

    def _maintain_mesh(self, topic: str, now: float, events: list[Event]) -> None:
        p = self.params
        mesh = self._mesh[topic]
        score = self._score.score
        for peer in sorted(mesh):
            if score(peer) < 0:
                self._prune(peer, topic, now, events, px=False)
        if len(mesh) < p.d_lo:
            for peer in self._pick(self._graft_candidates(topic, now), p.d - len(mesh)):
                self._graft(peer, topic, now, events)
        if len(mesh) > p.d_hi:
            by_score = self._pick(mesh, len(mesh))
            by_score.sort(key=score, reverse=True)
            keep = by_score[:p.d_score]
            rest = by_score[p.d_score:]
            self._rng.shuffle(rest)
            keep += rest[:p.d - p.d_score]
            outbound = sum(1 for q in keep if self._peers[q].outbound)
            if outbound < p.d_out:
                extra = [q for q in by_score if q not in keep and self._peers[q].outbound]
                extra = extra[:p.d_out - outbound]
                inbound_kept = [q for q in keep if not self._peers[q].outbound]
                for q in inbound_kept[len(inbound_kept) - len(extra):]:
                    keep.remove(q)
                keep += extra
            for peer in sorted(mesh - set(keep)):
                self._prune(peer, topic, now, events, px=True)
        if len(mesh) >= p.d_lo:
            outbound = sum(1 for q in mesh if self._peers[q].outbound)
            if outbound < p.d_out:
                candidates = [q for q in self._graft_candidates(topic, now)
                              if self._peers[q].outbound]
                for peer in self._pick(candidates, p.d_out - outbound):
                    self._graft(peer, topic, now, events)
        if self._ticks % p.opportunistic_graft_ticks == 0 and len(mesh) > 1:
            scores = sorted(score(q) for q in mesh)
            median = scores[len(scores) // 2]
            if median < self._score.params.opportunistic_graft_threshold:
                better = [q for q in self._graft_candidates(topic, now) if score(q) > median]
                for peer in self._pick(better, p.opportunistic_graft_peers):
                    self.counters["opportunistic_grafts"] += 1
                    self._graft(peer, topic, now, events)

    def _maintain_fanout(self, now: float) -> None:
        threshold = self._score.params.publish_threshold
        for topic in list(self._fanout):
            if self._fanout_last_publish.get(topic, 0.0) + self.params.fanout_ttl_s < now:
                del self._fanout[topic]
                self._fanout_last_publish.pop(topic, None)
                continue
            eligible = {q for q in self._topic_peers.get(topic, ())
                        if not self._peers[q].direct and self._score.score(q) >= threshold}
            members = self._fanout[topic]
            members &= eligible
            if len(members) < self.params.d:
                members.update(self._pick(eligible - members, self.params.d - len(members)))

    def _emit_gossip(self) -> None:
        p = self.params
        threshold = self._score.params.gossip_threshold
        for topic in sorted(set(self._mesh) | set(self._fanout)):
            ids = self._mcache.gossip_ids(topic)
            if not ids:
                continue
            exclude = self._mesh.get(topic, set()) | self._fanout.get(topic, set())
            candidates = [q for q in self._topic_peers.get(topic, ())
                          if q not in exclude and not self._peers[q].direct
                          and self._score.score(q) >= threshold]
            target = max(p.d_lazy, int(p.gossip_factor * len(candidates)))
            if len(ids) > p.max_ihave_length:
                ids = self._rng.sample(ids, p.max_ihave_length)
            for peer in self._pick(candidates, target):
                self._peers[peer].queue.add_ihave(topic, ids)
                self.counters["ihave_sent"] += 1
