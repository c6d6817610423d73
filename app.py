"""Segmentation Workbench: the Hugging Face Space's app_file. The app itself is the package workbench.app.

``python app.py [--host H] [--port P] [--engine auto|torch|openvino|onnxruntime]`` serves it (as ``workbench app``
does; ``WORKBENCH_ENGINE`` sets the engine too).
"""

if __name__ == "__main__":
    import sys

    from workbench.cli import process_engine
    from workbench.system.allocator import reexec_with_allocator

    # restart once with a caching allocator before torch loads, unless the engine may be OpenVINO (see allocator.py)
    reexec_with_allocator(process_engine("app", sys.argv[1:]))

    from workbench.app import main

    main()
