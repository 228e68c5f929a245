"""``python -m kernels.compile_check``: the offline compile check of the kernels (`kernels.triton.compile_check`)."""

import sys

if __name__ == "__main__":
    from kernels.triton.compile_check import main

    sys.exit(main())
