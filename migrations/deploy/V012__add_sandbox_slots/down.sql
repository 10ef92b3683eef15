DROP TABLE IF EXISTS sandbox_slots;
