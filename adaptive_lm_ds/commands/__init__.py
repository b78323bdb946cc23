"""The command-line programs, one module each with its ``main(argv=None)``; adaptive_lm_ds/cli.py names them
(``PROGRAMS``) and starts them. Library logic lives in the package proper; these modules parse flags,
call it and report."""
