"""The ranker's direct reader of Feast's Redis online store: Feast's own read, without the
`get_online_features` request machinery around it.

`get_online_features` of ~260 items spends most of its time outside Redis (request context, entity
protos built and serialised per call, response protos). This reader does what Feast's
`RedisOnlineStore.online_read` does, and only that, with Feast's code for what is stored where, so
Feast stays the single definition of the layout:

- feature view, join key and entity value type: from the Feast registry (`get_feature_view`,
  `get_entity`); the view's stored name from Feast's `_versioned_fv_name`;
- Redis key: Feast's `_redis_key` (its `serialize_entity_key` of the entity key, + the project),
  kept per id in an LRU (the same id always has the same key);
- hash fields: `RedisOnlineStore._generate_hset_keys_for_features` (mmh3 of "view:feature", and
  `_ts:<view>`);
- one pipelined HMGET batch: `RedisOnlineStore._read_hash_fields` (redis-py, or GLIDE when
  configured), on the store's own client;
- values: `RedisOnlineStore._get_features_for_entity`, Feast's ValueProtos (an unset value is an
  empty proto, as `get_online_features` returns it).

Only for the Redis online store (`reader(store)` is None for any other: SQLite reads go through
`get_online_features`). Tests: tests/integration/test_online_redis.py.
"""

from __future__ import annotations

from functools import lru_cache
from typing import cast

from feast.infra.online_stores.helpers import _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import python_values_to_proto_values

KEY_CACHE = 1 << 18  # serialised entity keys kept per feature view (~60 B each)


def reader(store) -> RedisReader | None:
    """A RedisReader over `store`'s online store when it is Feast's Redis store, else None."""
    online = store._get_provider().online_store
    return RedisReader(store) if isinstance(online, RedisOnlineStore) else None


class RedisReader:
    """Reads features of one feature view for many entity ids in one pipelined batch."""

    def __init__(self, store):
        self.store, self.config = store, store.config
        self._online: RedisOnlineStore = store._get_provider().online_store
        self._views: dict[str, tuple] = {}

    def read(self, refs: list[str], join_key: str, ids: list) -> dict[str, list]:
        """feature name -> per-id list of Feast ValueProtos (empty where absent), for `refs`
        ("view:feature", all of one view whose entity has `join_key`) and the entity `ids`."""
        views = {r.split(":", 1)[0] for r in refs}
        if len(views) != 1:
            raise ValueError(f"refs of one feature view expected, got views {sorted(views)}")
        key_of, fv_name = self._view(views.pop(), join_key)
        names = [r.split(":", 1)[1] for r in refs]
        # feast reads the FeatureView only when names or the override are missing
        requested, fields = self._online._generate_hset_keys_for_features(
            None,  # type: ignore[arg-type]
            list(names),
            fv_name_override=fv_name,
        )
        rows = self._online._read_hash_fields(self.config, [(key_of(i), fields) for i in ids])
        decoded = [  # never None: `names` is not empty, and each gets a (maybe empty) ValueProto
            cast(dict, self._online._get_features_for_entity(values, fv_name, list(requested))[1])
            for values in rows
        ]
        return {name: [row[name] for row in decoded] for name in names}

    def _view(self, name: str, join_key: str) -> tuple:
        """(id -> Redis key, stored view name) of feature view `name`, from the registry."""
        if name not in self._views:
            fv = self.store.get_feature_view(name)
            entities = [self.store.get_entity(e) for e in fv.entities]
            if [e.join_key for e in entities] != [join_key]:
                raise ValueError(
                    f"feature view {name!r} is keyed by "
                    f"{[e.join_key for e in entities]}, not [{join_key!r}]"
                )
            value_type = entities[0].value_type
            project, version = self.config.project, self.config.entity_key_serialization_version

            @lru_cache(maxsize=KEY_CACHE)
            def key_of(entity_id) -> bytes:
                proto = python_values_to_proto_values([entity_id], value_type)[0]
                return _redis_key(
                    project, EntityKeyProto(join_keys=[join_key], entity_values=[proto]), version
                )

            self._views[name] = (key_of, _versioned_fv_name(fv, self.config))
        return self._views[name]
