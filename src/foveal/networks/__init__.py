"""foveal.networks"""
