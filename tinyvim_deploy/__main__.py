"""``python -m tinyvim_deploy`` (and ``torchrun -m tinyvim_deploy``) is the ``tvdeploy`` command."""

from tinyvim_deploy.cli import main

if __name__ == "__main__":
    main()
