"""Where a model comes from: the built-in VAE assembled from registered parts
(:mod:`~pyro_vae.stories.build`), the shipped stories (:mod:`~pyro_vae.stories.catalog`), a
user's story file (:mod:`~pyro_vae.stories.loader`), and which story files in run folders this
user trusts to import (:mod:`~pyro_vae.stories.trust`).
"""

from pyro_vae.stories.build import (
                                    PARTS,
                                    build_part,
                                    build_story,
                                    build_story_guide,
                                    build_vae,
                                    check_model_config,
                                    check_run_story_files,
                                    migrate_model_config,
                                    option_fields,
                                    part_options,
                                    story_is_binary,
                                    with_options,
)
from pyro_vae.stories.catalog import STORIES, default_objective, is_named
from pyro_vae.stories.loader import (
                                    StoryError,
                                    call_factory,
                                    check_model_args,
                                    check_story,
                                    enumeration_error,
                                    factory_keywords,
                                    first_sentence,
                                    load_object,
                                    parse_arg,
                                    parse_spec,
                                    sha256_of,
)
from pyro_vae.stories.trust import (
                                    TRUST_ENV,
                                    TRUST_FLAG,
                                    UntrustedStoryError,
                                    record_written,
                                    trust_file,
                                    trusted_digests,
)

__all__ = [
    "build_part",
    "build_story",
    "build_story_guide",
    "build_vae",
    "call_factory",
    "check_model_args",
    "check_model_config",
    "check_run_story_files",
    "check_story",
    "first_sentence",
    "enumeration_error",
    "default_objective",
    "factory_keywords",
    "is_named",
    "load_object",
    "migrate_model_config",
    "option_fields",
    "parse_arg",
    "parse_spec",
    "part_options",
    "PARTS",
    "record_written",
    "sha256_of",
    "STORIES",
    "story_is_binary",
    "StoryError",
    "TRUST_ENV",
    "TRUST_FLAG",
    "trust_file",
    "trusted_digests",
    "UntrustedStoryError",
    "with_options",
]
