from modelyard.local_mesh import die_with_parent

die_with_parent()  # first: a service spawned by `up` or a test goes when its parent goes

from modelyard.cli.main import main  # noqa: E402

main()
