# relion_it.py options for on-the-fly self-supervised picking with relion-plugins.
#
# Before the first run, put our on-the-fly scheme into the project as "proc" (relion_it.py never
# overwrites an existing Schemes/proc/):
#     relion-plugins scheme install selfpick_otf --name proc
# then start:
#     relion_it.py examples/relion_it_options.py --nogui
#
# Keys with one "__" set a scheme variable (relion_schemer --set_var), keys with two set a job option
# (relion_pipeliner --editJob). relion_it.py also tries its own proc__autopick__* and
# proc__select_parts__* keys; those nodes do not exist in our scheme and the printed errors are harmless.
# The file is read with ast.literal_eval: a Python dict literal, nothing else.
{
    # what to run
    'do_prep': True,
    'do_proc': True,
    # movies and microscope (RELION's prep scheme)
    'prep__importmovies__fn_in_raw': 'Movies/*.tiff',
    'prep__importmovies__angpix': 0.885,
    'prep__importmovies__kV': 300,
    'prep__importmovies__Cs': 2.7,
    'prep__motioncorr__dose_per_frame': 1.2,
    'prep__motioncorr__fn_gain_ref': '',
    'prep__motioncorr__bin_factor': 1,
    'prep__do_at_most': 50,
    # where our scheme finds the micrographs (the default: prep's ctffind job)
    'proc__ctffind_mics': 'Schemes/prep/ctffind/micrographs_ctf.star',
    # particle and boxes
    'proc__particle_diameter': 180,
    'proc__box_size': 256,
    'proc__rescaled_size': 64,
    # relion_it.py always writes its own extract options: keep them equal to box_size / rescaled_size
    'proc__extract__extract_size': 256,
    'proc__extract__rescale': 64,
    'proc__extract__do_rescale': 'True',
    'proc__extract__do_fom_threshold': 'False',
    # 2D classification and selection
    'proc__nr_classes': 50,
    'proc__min_score': 0.5,
    'proc__min_pres': -1,
    'proc__class2d__gpu_ids': '0',
    # training: first model once this many particles are selected, retrain when the selection doubled
    'proc__min_train_parts': 1000,
    'proc__retrain_factor': 2,
    'proc__train_epochs': 10,
    'proc__pick_threshold': 0.5,
    # our jobs on the GPU (a string: -1 = CPU)
    'proc__gpu': '0',
    'proc__nr_threads': 8,
    # the on-the-fly loop's wait between rounds and total time
    'proc__wait_sec': 180,
    'proc__maxtime_hr': 48,
}
