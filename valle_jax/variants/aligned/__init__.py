"""The aligned variant: VALL-E told when each phoneme is spoken (docs/variants/aligned.md).

    valle-jax align --dataset=DIR          forced alignments of a prepared dataset (align.py)
    valle-jax train --config=valle_jax/variants/aligned/config.py --config.data.dataset=DIR
    valle-jax demo --variant=aligned       the toy demo with this variant

- models.py    PointerARModel (a phoneme pointer with a move-on head) and TimedNARModel
               (codebook 1 too, told each frame's phoneme), subclasses of VALL-E's;
- losses.py    their losses; data.py the alignments and the batch loader that adds them;
- sampling.py  the pointer's sampler controller and the synthesis decoding;
- config.py    the training and demo configs.

Importing this package registers its recipe (`RECIPE`, valle_jax/recipe.py) under the name
"aligned", the `variant` its configs set.
"""
from valle_jax import recipe
from valle_jax.variants.aligned import align, config, data, losses, models, sampling

RECIPE = recipe.register(recipe.Recipe(
    name="aligned", ar_model=models.PointerARModel, nar_model=models.TimedNARModel,
    ar_loss=losses.pointer_ar_loss, nar_loss=losses.timed_nar_loss,
    batch_loader=data.batch_loader, crop_long=False, decoding=sampling.decoding,
    prepare_dataset=align.align_dataset, demo_config=config.demo_config))
