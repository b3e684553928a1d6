"""Feature services: what a training set holds, and what the online ranker reads."""

from feast import FeatureService

from feature_repo.feature_views import interest_features, item_embeddings, user_behaviour
from mminterest.schemas import ITEM_ATTRIBUTES, VECTORS

INTEREST = ["sim_img", "sim_txt", "sim_mask_img", "sim_mask_txt", "dist_img", "dist_txt"]

# Point-in-time rows for (user_id, item_id, event_timestamp): the history, the target-dependent
# features the Spark job computed, the target item's vectors.
ctr_training = FeatureService(
    name="ctr_training",
    features=[
        user_behaviour[["hist_item_ids", "hist_ts", "hist_len"]],
        interest_features[INTEREST],
        item_embeddings[["fused", "has_img"]],
    ],
    description="CTR training set (history, similarity sequences, interest distributions)",
)

# Online: the user's history, and the vectors and attributes (category, has-image) of history and
# candidate items, so an item added after training is scored with its content and category; the
# target-dependent features are computed from them at request time (serving/online.py).
ctr_serving = FeatureService(
    name="ctr_serving",
    features=[
        user_behaviour[["hist_item_ids", "hist_len"]],
        item_embeddings[[*VECTORS, *ITEM_ATTRIBUTES]],
    ],
    description="online ranker reads",
)
