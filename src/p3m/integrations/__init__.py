"""p3m inside other tools (one subpackage each); they use p3m, p3m never imports them."""
