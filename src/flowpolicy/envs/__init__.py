"""Environments: one `make_env` for Gymnasium, DeepMind Control and toy multimodal tasks.

`flowpolicy.envs.dmc` imports dm_control only when a `DMCEnv` is built, so importing this
package stays fast.
"""

from flowpolicy.envs.dmc import DMCEnv
from flowpolicy.envs.registry import EnvSpec, env_dims, make_env, make_vector_env
from flowpolicy.envs.toy import BanditEnv, NavEnv, optimum_coverage, route_of
from flowpolicy.envs.wrappers import ActionChunk

__all__ = [
    "ActionChunk",
    "BanditEnv",
    "DMCEnv",
    "EnvSpec",
    "NavEnv",
    "env_dims",
    "make_env",
    "make_vector_env",
    "optimum_coverage",
    "route_of",
]
