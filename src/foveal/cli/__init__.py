"""foveal.cli"""
