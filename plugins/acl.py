"""Topic ACL: who may publish and subscribe where, like Mosquitto's `acl_file` patterns.

Patterns take `%u` (the principal's id), `%c` (the client id) and `%d` (each device of a resident's
household). A PUBLISH topic must match a publish pattern; a SUBSCRIBE filter must be *covered* by a
subscribe pattern (every topic the filter can match, the pattern matches too), so `flat/1/#` is not
let through by `flat/1/+`. `$`-topics are only matched by patterns that spell the `$` level.
Anonymous clients (local-only mode) are not restricted, except for `$SYS`, unless `acl.anonymous` is set.
A rule's `deny` patterns are checked first. The per-client cap on
subscriptions is enforced here too, since amqtt calls this plugin on every SUBSCRIBE.
A shared subscription `$share/{ShareName}/{filter}` is judged on its full name (`share_allowed`): a
group is joined only under the principal's own ShareName (an integrator's id, `{role}-{id}` for others)
with a filter it may read, or where a subscribe pattern covers the whole `$share/...` name (built-in: a
resident's or device's own topics under any ShareName); a ShareName that is an integrator's id is that
integrator's alone. It counts toward the cap as a subscription of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from amqtt.plugins.base import BaseTopicPlugin

from broker.config import AclRule
from broker.core import topics
from broker.core.errors import NotFound
from broker.core.policy import own_topics
from broker.core.services import Services
from broker.core.tokens import Principal
from broker.limiter import LogThrottle
from broker.mqtt.amqtt_compat import PUBLISH_ACTION, RECEIVE_ACTION, SUBSCRIBE_ACTION, Action
from broker.mqtt.hooks import PRINCIPAL, TracksSessions
from broker.mqtt.session import Session
from broker.mqtt.shared_index import shared_parts

__all__ = ["DEFAULT_ACL", "FILTERS", "TopicAclPlugin", "covers", "expand", "played_party"]

log = logging.getLogger("intercom.acl")
FILTERS = "intercom.filters"  # session attribute: the filters this session holds, for the cap
SYS_TOPICS = "$SYS/broker/#"
PLAYED = "intercom.played"  # session attribute: the parties an admin connection has published as

DEFAULT_ACL: dict[str, AclRule] = {
    # a party publishes on its own input topics only (broker.core.policy: a device or resident speaks as itself)
    "device": AclRule(
        publish=own_topics("device", "%u"),
        subscribe=[topics.device_all("%u"), topics.system("#")],  # the seed's system messages reach stations too
    ),
    "resident": AclRule(
        publish=own_topics("resident", "%u"),
        subscribe=[topics.resident_all("%u"), topics.system("#"), topics.device_status("%d")],
    ),
    "admin": AclRule(publish=["#"], subscribe=["#", "$SYS/#"]),
    "integrator": AclRule(),
}


def covers(pattern: str, topic_filter: str) -> bool:
    """True if every topic `topic_filter` matches is matched by `pattern` (a topic is its own filter)."""
    p_levels, f_levels = pattern.split("/"), topic_filter.split("/")
    if topic_filter.startswith("$") and p_levels[0] != f_levels[0]:
        return False  # [MQTT-4.7.2-1]: wildcards never match a leading `$` level
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(f_levels):
            return False
        f = f_levels[i]
        if f == "#" or (f == "+" and p != "+") or (p not in ("+", f)):
            return False
    return len(p_levels) == len(f_levels)


def expand(pattern: str, principal: Principal, client_id: str, devices: Iterable[str]) -> list[str]:
    """Substitute `%u`, `%c`, `%d`; a value holding a wildcard or `/` yields no pattern (deny)."""
    out = pattern.replace("%u", principal.id) if "%u" in pattern else pattern
    if any(c in principal.id for c in "+#/") and "%u" in pattern:
        return []
    if "%c" in out:
        if any(c in client_id for c in "+#"):
            return []
        out = out.replace("%c", client_id)
    if "%d" in out:
        return [out.replace("%d", d) for d in devices if not any(c in d for c in "+#/")]
    return [out]


# Shared subscriptions the built-in rules allow beyond a principal's own ShareName: a resident's or device's own
# topics, which nobody else (but the admin) may read, under any ShareName.
DEFAULT_SHARES: dict[str, list[str]] = {
    "device": [f"$share/+/{topics.device_all('%u')}"],
    "resident": [f"$share/+/{topics.resident_all('%u')}"],
    "admin": ["$share/#"],
}


def own_share_name(principal: Principal) -> str:
    """The ShareName only this principal may use: an integrator's id, else its client id `{role}-{id}`."""
    return principal.id if principal.role == "integrator" else f"{principal.role}-{principal.id}"


def played_party(topic: str) -> str | None:
    """The device or resident a publish on `topic` speaks for, if it is one of a party's own input topics."""
    parsed = topics.classify(topic)
    return f"{parsed.role} {parsed.id}" if parsed is not None else None


class TopicAclPlugin(BaseTopicPlugin, TracksSessions):
    @dataclass
    class Config:
        """No options: the table comes from broker.yaml's `acl:` and is bound at start."""

    services: Services | None = None
    refusals: LogThrottle = LogThrottle()  # replaced per broker by `bind`
    refused = 0  # publishes and subscriptions refused, for /metrics
    checks_receive = False  # RECEIVE is decided when the subscription is made (hooks.FiltersTopicsSync)

    def bind(self, services: Services) -> None:
        self.services = services
        self.refusals = LogThrottle()  # refusals are client-driven: one line per client and action every 5 s

    def rule(self, principal: Principal) -> AclRule:
        acl = self.services.settings.acl if self.services else None
        if acl is not None and principal.role == "integrator":
            integrator = acl.integrators.get(principal.id)
            if integrator is None:
                return AclRule()
            # integrators (monitoring) read the broker's $SYS topics, as the admin does
            return integrator.acl.model_copy(update={"subscribe": [*integrator.acl.subscribe, SYS_TOPICS]})
        if acl is not None and principal.role in acl.roles:
            return acl.roles[principal.role]
        return DEFAULT_ACL.get(principal.role, AclRule())

    def share_allowed(self, principal: Principal | None, client_id: str, share_name: str, topic_filter: str,
                      full: str) -> bool:
        """May `principal` (None: anonymous, local-only) join `full` = `$share/{share_name}/{topic_filter}`?"""
        acl = self.services.settings.acl if self.services else None
        owner = share_name in acl.integrators if acl is not None else False
        if principal is None:  # anonymous clients share freely, but not under an integrator's name
            return not owner
        if owner and principal.role != "admin" and (principal.role, principal.id) != ("integrator", share_name):
            return False
        rule = self.rule(principal)
        if any(covers(p, topic_filter) for pattern in rule.deny
               for p in expand(pattern, principal, client_id, ())):
            return False
        if share_name == own_share_name(principal) and self.allowed_by(rule, principal, client_id, topic_filter,
                                                                       SUBSCRIBE_ACTION):
            return True
        if acl is None or principal.role not in acl.roles:
            rule = AclRule(subscribe=[*rule.subscribe, *DEFAULT_SHARES.get(principal.role, [])], deny=rule.deny)
        return self.allowed_by(rule, principal, client_id, full, SUBSCRIBE_ACTION)

    def allowed(self, principal: Principal, client_id: str, topic: str, action: Action) -> bool:
        return self.allowed_by(self.rule(principal), principal, client_id, topic, action)

    def allowed_by(self, rule: AclRule, principal: Principal, client_id: str, topic: str,
                   action: Action | None) -> bool:
        for pattern in rule.deny:
            if any(covers(p, topic) for p in expand(pattern, principal, client_id, ())):
                return False
        patterns = rule.publish if action is PUBLISH_ACTION else rule.subscribe
        for pattern in patterns:
            devices = self._household_devices(principal) if "%d" in pattern else ()
            if any(covers(p, topic) for p in expand(pattern, principal, client_id, devices)):
                return True
        return False

    def _household_devices(self, principal: Principal) -> list[str]:
        if self.services is None or principal.role != "resident":
            return []
        directory = self.services.directory
        try:
            household = directory.resident(principal.id)["household_number"]
        except NotFound:  # a deleted resident has no devices
            return []
        return [d["device_id"] for d in directory.list_all("devices", household)]

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None,
    ) -> bool | None:
        return self.topic_filtering_sync(session, topic, action)

    def topic_filtering_sync(self, session: Session | None, topic: str | None, action: Action | None) -> bool | None:
        """The check itself, synchronous (the fast path calls it per delivery without a task)."""
        if action is RECEIVE_ACTION:
            return True  # decided when the subscription was made; deliveries stay cheap
        if session is None or topic is None:
            return False
        subscribed = topic
        share = shared_parts(topic) if action is SUBSCRIBE_ACTION else None
        if share is not None:
            topic = share[1]  # `$share/{ShareName}/{filter}`: the filter is what would be read
        principal: Principal | None = session.attributes.get(PRINCIPAL)
        anonymous = self.services.settings.acl.anonymous if self.services else None
        cid = session.client_id or ""
        if principal is None:  # anonymous only exists in local-only mode
            if anonymous is None:
                ok = not topic.startswith("$")
            else:
                ok = self.allowed_by(anonymous, Principal("anonymous", ""), cid, topic, action)
            ok = ok and (share is None or self.share_allowed(None, cid, share[0], topic, subscribed))
        else:
            try:
                if share is not None:
                    ok = self.share_allowed(principal, cid, share[0], topic, subscribed)
                else:
                    ok = self.allowed(principal, cid, topic, action or PUBLISH_ACTION)
            except Exception:  # fail closed
                log.exception("ACL check of %r failed", topic)
                ok = False
        if not ok:
            self.refused += 1
            self.refusals.log(log, logging.WARNING, f"{session.client_id}|{action}", "ACL: %r may not %s %r",
                              principal or session.client_id, action, subscribed,
                              extra={"client_id": session.client_id,
                                     "principal": f"{principal.role}:{principal.id}" if principal else None})
            return False
        if action is SUBSCRIBE_ACTION:
            return self._count_subscription(session, subscribed)
        if principal is not None and principal.role == "admin":
            self._note_simulated(session, topic)
        return True

    @staticmethod
    def _note_simulated(session: Session, topic: str) -> None:
        """The admin (the web console's simulator) publishing as a device or resident: say so, once per party."""
        party = played_party(topic)
        played: set[str] = session.attributes.setdefault(PLAYED, set())
        if party is None or party in played:
            return
        played.add(party)
        log.info("admin client %r plays %s (simulated) on %r", session.client_id, party, topic)

    def _count_subscription(self, session: Session, topic_filter: str) -> bool:
        # a tuple, not a set: most clients hold one or two filters (a set of one costs 216 bytes, a tuple 48)
        held: tuple[str, ...] = session.attributes.get(FILTERS, ())
        if topic_filter in held:
            return True
        cap = self.services.settings.limits.max_subscriptions_per_client if self.services else 0
        if len(held) >= cap:
            self.refusals.log(log, logging.WARNING, f"{session.client_id}|cap", "%r has %d subscriptions, the maximum: "
                              "refused %r", session.client_id, cap, topic_filter)
            return False
        session.attributes[FILTERS] = (*held, topic_filter)
        return True

    def session_unsubscribed(self, session: Session, topic_filter: str) -> None:
        held: tuple[str, ...] = session.attributes.get(FILTERS, ())
        if topic_filter in held:
            session.attributes[FILTERS] = tuple(f for f in held if f != topic_filter)
