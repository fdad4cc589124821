require "fileinto";
if exists "list-id" { fileinto "Lists"; }
elsif exists ["x-priority", "cc"] { fileinto "Work"; }
