require "fileinto";
if header :comparator "i;ascii-casemap" :contains "subject" "TEST" { fileinto "Work"; }
if header :comparator "i;ascii-casemap" :is "subject" "CAFÉ REPORT Q4" { fileinto "Misc"; }
