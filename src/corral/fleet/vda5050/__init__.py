"""VDA 5050 (2.x) master control: corral drives AGVs and AMRs that speak the standard over
MQTT, as robots of its fleet (docs/vda5050.md)."""
